-- Argo CD health check for modeldeploy.io/ModelDeployment.
-- Register it in argocd-cm under resource.customizations.health.modeldeploy.io_ModelDeployment.
-- Reads only the status the operator writes (kstatus conventions): observedGeneration,
-- the Ready and Stalled conditions, and the canary of a rollout in progress.
local health = {status = "Progressing", message = "Waiting for the modeldeploy operator"}
if obj.status == nil then
  return health
end
local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  health.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return health
end
local conditions = {}
for _, condition in ipairs(status.conditions or {}) do
  conditions[condition.type] = condition
end
if conditions.Stalled ~= nil and conditions.Stalled.status == "True" then
  return {status = "Degraded", message = conditions.Stalled.message or "Stalled"}
end
if type(status.canary) == "table" then
  local weight = status.canary.weight or 0
  return {status = "Progressing", message = "Canary " .. tostring(status.canary.version or status.canary.uri)
    .. " at " .. tostring(weight) .. "% of traffic"}
end
if conditions.Ready ~= nil and conditions.Ready.status == "True" then
  return {status = "Healthy", message = conditions.Ready.message or "Ready"}
end
if conditions.Progressing ~= nil and conditions.Progressing.message ~= nil then
  health.message = conditions.Progressing.message
end
return health

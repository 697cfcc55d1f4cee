-- Runs an Argo CD health script the way Argo CD does: the object is the global `obj`,
-- the script's return value is the health. Usage: lua5.4 argocd_health_runner.lua SCRIPT < object.json
local cjson = require("cjson")
obj = cjson.decode(io.read("a"))
local check = assert(loadfile(arg[1]))
local health = check()
io.write(health.status, "\t", health.message or "")

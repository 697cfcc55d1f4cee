"""The modeldeploy operator: turns ModelDeployment resources into serving workloads."""

-- Argo CD health check of finetune.dev/ModelServer (argocd-cm: resource.customizations.health.finetune.dev_ModelServer).
-- Healthy only when a replica serves and every replica holds the desired adapters (condition Converged);
-- a spec the operator refuses is Degraded; anything on its way (pods starting, adapters loading) is Progressing.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the ModelServer"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local ready = find(status.conditions, "Ready")
local converged = find(status.conditions, "Converged")
if ready ~= nil and ready.status == "False" and ready.reason == "ConfigInvalid" then
  hs.status = "Degraded"
  hs.message = "ConfigInvalid: " .. tostring(ready.message)
  return hs
end
if ready == nil or ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = "No replica ready" .. ((ready ~= nil and ready.message ~= nil) and (": " .. ready.message) or "")
  return hs
end
local summary = tostring(status.adapterCount or 0) .. " adapters, " .. tostring(status.readyReplicas or 0) .. "/" ..
  tostring(status.replicas or 0) .. " replicas ready, " .. tostring(status.capacityLeft or 0) .. " free"
if converged == nil or converged.status ~= "True" then
  hs.status = "Progressing"
  hs.message = "Converging: " .. summary
  return hs
end
hs.status = "Healthy"
hs.message = summary
return hs

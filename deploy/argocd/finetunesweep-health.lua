-- Argo CD health check of finetune.dev/FineTuneSweep (argocd-cm: resource.customizations.health.finetune.dev_FineTuneSweep).
-- A spec the operator has not yet observed is Progressing whatever the old status says.
local hs = {}
local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

local function trials(s)
  if s.summary ~= nil then
    return s.summary .. " trials finished"
  end
  return "no trial finished yet"
end

local function leader(s)
  if s.best ~= nil and s.best.name ~= nil then
    return "; best " .. s.best.name .. " (" .. tostring(s.objective) .. " " .. tostring(s.best.objective) .. ")"
  end
  return ""
end

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the FineTuneSweep"
  return hs
end

if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.winner ~= nil and status.winner.name ~= nil then
    hs.message = "Winner " .. status.winner.name .. " (" .. tostring(status.objective) .. " " .. tostring(status.winner.objective) .. ")"
    if status.winner.published ~= nil and status.winner.published.endpoint ~= nil then
      hs.message = hs.message .. ", serving at " .. status.winner.published.endpoint
    end
  else
    hs.message = "Succeeded"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  if status.error ~= nil and status.error.message ~= nil then
    hs.message = (status.error.code or "Failed") .. ": " .. status.error.message
  else
    hs.message = "Failed"
  end
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. trials(status) .. leader(status)
elseif phase == "Publishing" then
  hs.status = "Progressing"
  if status.winner ~= nil and status.winner.name ~= nil then
    hs.message = "Publishing winner " .. status.winner.name
  else
    hs.message = "Publishing"
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs

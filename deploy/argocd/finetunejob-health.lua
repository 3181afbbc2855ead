-- Argo CD health check of finetune.dev/FineTuneJob (argocd-cm: resource.customizations.health.finetune.dev_FineTuneJob).
-- Order matters: a spec the operator has not yet observed is Progressing whatever the old status says, so a
-- re-sync that changes training fields never shows the previous run's Healthy or Degraded verdict.
local hs = {}

local function detail(status)
  if status.progress ~= nil and status.progress.percent ~= nil then
    local text = tostring(status.progress.percent) .. "%"
    if status.progress.step ~= nil and status.progress.totalSteps ~= nil then
      text = text .. " (step " .. tostring(status.progress.step) .. "/" .. tostring(status.progress.totalSteps) .. ")"
    end
    return text
  end
  if status.conditions ~= nil then
    for _, condition in ipairs(status.conditions) do
      if condition.type == "Trained" and condition.message ~= nil and condition.message ~= "" then
        return condition.message
      end
    end
  end
  return nil
end

local function with_detail(prefix, text)
  if text == nil or text == "" then
    return prefix
  end
  return prefix .. ": " .. text
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the FineTuneJob"
  return hs
end

if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Serving" then
  hs.status = "Healthy"
  if status.endpoint ~= nil and status.endpoint.url ~= nil then
    hs.message = "Serving run " .. tostring(status.endpoint.run) .. " at " .. status.endpoint.url
  else
    hs.message = "Serving"
  end
elseif phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Run " .. tostring(status.run) .. " succeeded"
elseif phase == "Failed" then
  hs.status = "Degraded"
  if status.error ~= nil and status.error.message ~= nil then
    hs.message = with_detail(status.error.code or "Failed", status.error.message)
  else
    hs.message = with_detail("Failed", detail(status))
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true)"
elseif phase == "Pending" or phase == "Queued" or phase == "Validating" or phase == "Training" or phase == "Evaluating"
    or phase == "Publishing" then
  hs.status = "Progressing"
  if status.error ~= nil and status.error.message ~= nil then
    hs.message = with_detail(phase, status.error.message)
  else
    hs.message = with_detail(phase, detail(status))
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs

-- Argo CD health check for kubefusion.dev/FusionRun.
-- Install: resource.customizations.health.kubefusion.dev_FusionRun in argocd-cm (see docs/operator.md).
-- Reads only the status the operator writes: observedGeneration and the conditions.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubefusion operator"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local function is_true(type_)
  return conditions[type_] ~= nil and conditions[type_].status == "True"
end
local function message_of(type_, fallback)
  if conditions[type_] ~= nil and conditions[type_].message ~= nil and conditions[type_].message ~= "" then
    return conditions[type_].message
  end
  return fallback
end
if is_true("Failed") or is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = message_of("Failed", obj.status.message or "The run failed")
elseif is_true("Succeeded") then
  hs.status = "Healthy"
  hs.message = message_of("Succeeded", "The run succeeded")
elseif is_true("Suspended") then
  hs.status = "Suspended"
  hs.message = message_of("Suspended", "The run is suspended")
else
  hs.status = "Progressing"
  hs.message = obj.status.progress or message_of("Progressing", "The run is progressing")
end
return hs

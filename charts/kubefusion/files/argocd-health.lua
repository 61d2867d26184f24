-- Argo CD health check for kubefusion.dev/FusionRun, for argocd-cm's
-- resource.customizations.health.kubefusion.dev_FusionRun. It reads the conditions the operator sets:
--   Succeeded=True -> Healthy; Failed or Stalled=True -> Degraded; Suspended=True -> Suspended;
--   anything else (no status yet, a generation not yet observed, running) -> Progressing.
local hs = {status = "Progressing", message = "Waiting for the kubefusion operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local function is_true(kind)
  return conditions[kind] ~= nil and conditions[kind].status == "True"
end
local function message_of(kind)
  local condition = conditions[kind]
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return obj.status.message or kind
end
if is_true("Failed") then
  hs.status = "Degraded"
  hs.message = message_of("Failed")
elseif is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = message_of("Stalled")
elseif is_true("Succeeded") then
  hs.status = "Healthy"
  hs.message = message_of("Succeeded")
elseif is_true("Suspended") then
  hs.status = "Suspended"
  hs.message = message_of("Suspended")
else
  hs.status = "Progressing"
  hs.message = obj.status.progress or message_of("Progressing")
end
return hs

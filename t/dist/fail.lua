-- t/dist/fail.lua WHERE -- rank 1 raises an error while rank 0 waits for it
-- in a collective (WHERE "collective"), or during a DataParallel backward
-- (WHERE "backward"): the job must end with the error shown, not hang.
local glia = require "glia"
local nn = require "glia.nn"
local dist = require "glia.distributed"
local r = dist.init()
if arg[1] == "collective" then
  if r == 1 then error("rank one gives up here") end
  dist.all_reduce(glia.ones(3))
else
  local model = dist.DataParallel(nn.Linear(4, 2), { bucket_mb = 1 })
  local loss = glia.sum(model(glia.ones(3, 4)))
  if r == 1 then error("rank one fails before its backward") end
  loss:backward()
  model:sync()
end
print("rank " .. r .. " was not stopped")

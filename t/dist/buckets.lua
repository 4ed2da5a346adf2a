-- t/dist/buckets.lua BUCKET_MB -- prints DataParallel's bucket layout (one
-- line per bucket: parameter indices) and the parameter sizes, for
-- t/distributed.t to check that the buckets cover each parameter once.
local glia = require "glia"
local nn = require "glia.nn"
local dist = require "glia.distributed"
local r = dist.init()
local net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.LayerNorm(128),
                          nn.Linear(128, 10))
local model = dist.DataParallel(net, { bucket_mb = tonumber(arg[1]) })
if r == 0 then
  local sizes = {}
  for i, p in ipairs(net:parameters()) do sizes[i] = p:numel() end
  print("sizes " .. table.concat(sizes, ","))
  for _, b in ipairs(model:bucket_layout()) do print("bucket " .. table.concat(b, ",")) end
end

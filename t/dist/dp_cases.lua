-- t/dist/dp_cases.lua -- DataParallel's edge cases on 2 ranks, printed as
-- "rank <r> <case> <result>" lines for t/distributed.t:
--   partial  a parameter only rank 0 uses: after sync both ranks hold rank
--            0's gradient / 2 (rank 1 counted zero), the same on both
--   twice    a second backward before sync() is an error, not a lost gradient
--   wrap     DataParallel copies rank 0's parameters to every rank
--   moebias  nn.MoE's balancing bias, updated from each rank's own routing,
--            stays the same on both ranks (sync sums the counts over ranks)
local glia = require "glia"
local nn = require "glia.nn"
local dist = require "glia.distributed"
local r = dist.init()

local Net = nn.Module:extend("Net")
function Net:__init()
  self.a = nn.Linear(3, 2)
  self.extra = nn.Linear(3, 2)
end
function Net:forward(x, use_extra)
  local y = self.a(x)
  if use_extra then y = y + self.extra(x) end
  return y
end

glia.manual_seed(10 + r)
local net = Net()
local dp = dist.DataParallel(net, { bucket_mb = 1 })
local w = net.a.weight:clone()
dist.broadcast(w, 1)
print(("rank %d wrap %s"):format(r, tostring(glia.max(glia.abs(w - net.a.weight)):item() == 0)))

local x = glia.tensor{ { 1, 2, 3 }, { -1, 0.5, 2 } }
glia.sum(dp(x, r == 0)):backward()
dp:sync()
-- d sum(extra(x)) / d weight = column sums of x per output row: {0, 2.5, 5}; halved
local g = net.extra.weight.grad
print(("rank %d partial %s"):format(r, g and table.concat(g:view(6):totable(), ",") or "nil"))

glia.sum(dp(x)):backward()
local ok, err = pcall(function() glia.sum(dp(x)):backward() end)
print(("rank %d twice %s"):format(r, ok and "no error" or err))
dp:sync()

-- Each rank routes its own tokens; the bias update must see the global load.
glia.manual_seed(3)
local moe = nn.MoE(4, 8, 4, { k = 1, bias_gamma = 0.01 })
local dpm = dist.DataParallel(moe, { bucket_mb = 1 })
glia.manual_seed(20 + r)
for _ = 1, 3 do
  glia.sum(dpm(glia.randn(6 + 4 * r, 4))):backward()
  dpm:sync()
  nn.schedule_step(moe)
end
local b = moe.expert_bias[1]
print(("rank %d moebias %s"):format(r, table.concat(b:totable(), ",")))

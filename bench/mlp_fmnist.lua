-- bench/mlp_fmnist.lua -- the mlp_fmnist workload of WORKLOADS.md: one
-- epoch of the 784-512-256-10 ReLU perceptron on Fashion-MNIST (batch 128,
-- Adam 1e-3, shuffled), then the test accuracy. The recipe and the timed
-- region are those of torch_ref.py's mlp_fmnist: the clock (glia.clock, wall
-- seconds) runs from the first batch's shuffle to the last optimizer step.
--
-- Usage: GLIA_NUM_THREADS=2 glia bench/mlp_fmnist.lua [--seed N]
-- Prints one line, as torch_ref.py does:
--   mlp_fmnist epoch 2.10 s  test acc 85.5%  maxrss 450 MB
-- (maxrss: the process's peak resident set, VmHWM).
local script_dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/../?.lua;" .. package.path

local glia  = require "glia"
local optim = require "glia.optim"
local data  = require "glia.data"
local MLP   = require "models.mlp"
local fmnist = require "examples.fmnist"

local seed = 0
if arg[1] == "--seed" and tonumber(arg[2]) then seed = tonumber(arg[2]) end

-- The peak resident set in MB, or nil where /proc is missing.
local function maxrss_mb()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local kb = f:read("*a"):match("VmHWM:%s*(%d+)")
  f:close()
  return kb and tonumber(kb) / 1024
end

-- Both splits, as the examples load them (scratch copies handed back).
local x, y, xt, yt = fmnist.load({}, error)

glia.manual_seed(seed)
local model = MLP()
local opt = optim.Adam(model:parameters(), { lr = 1e-3 })
local loader = data.DataLoader(data.TensorDataset(x, y),
                               { batch_size = 128, shuffle = true, seed = seed })
local cross_entropy = glia.cross_entropy

local t0 = glia.clock()
for xb, yb in loader:iter() do
  local loss = cross_entropy(model(xb), yb)
  opt:zero_grad()
  loss:backward()
  opt:step()
end
local epoch_s = glia.clock() - t0

local _, acc = model:evaluate(xt, yt)
local rss = maxrss_mb()
io.write(string.format("mlp_fmnist epoch %.2f s  test acc %.1f%%  maxrss %s MB\n", epoch_s,
                       acc * 100, rss and string.format("%.0f", rss) or "?"))

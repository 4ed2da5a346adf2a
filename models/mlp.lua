-- models/mlp.lua -- the mlp_fmnist workload's model: a multi-layer
-- perceptron, Linear and ReLU layers in turn, ending with a Linear layer
-- that gives the class logits.
--
--   local MLP = require "models.mlp"
--   local model = MLP()                          -- 784-512-256-10, the workload's shape
--   local model = MLP{sizes = {784, 128, 10}}    -- any widths, at least input and output
--   local loss, acc = model:evaluate(x, y)       -- mean cross entropy and accuracy in [0, 1]
--
-- MLP is an nn.Sequential, so its parameters are named like PyTorch's
-- nn.Sequential of the same layers, one-based: "1.weight", "1.bias",
-- "3.weight", ... (the ReLUs hold none).
local glia = require "glia"
local nn   = require "glia.nn"
local options = require "glia.options"

local type, ipairs, error, tostring = type, ipairs, error, tostring
local floor, min, concat = math.floor, math.min, table.concat

local MLP = nn.Sequential:extend("MLP")

local DEFAULT_SIZES = { 784, 512, 256, 10 }
local EVAL_BATCH = 2048 -- rows per forward pass in evaluate: bounds the activations' memory

-- MLP([{sizes = {n_in, hidden..., n_out}}]): Linear layers between
-- consecutive sizes, each but the last followed by a ReLU.
function MLP:__init(opts)
  local sizes = options.check("models.mlp", opts, { "sizes" }, 2).sizes or DEFAULT_SIZES
  if type(sizes) ~= "table" or #sizes < 2 then
    error("models.mlp: sizes must list at least the input and output widths, got "
          .. tostring(sizes), 3)
  end
  for i, n in ipairs(sizes) do
    if type(n) ~= "number" or n < 1 or n ~= floor(n) then
      error("models.mlp: sizes[" .. i .. "] must be a positive integer, got " .. tostring(n), 3)
    end
  end
  self.sizes = sizes
  for i = 1, #sizes - 1 do
    self:append(nn.Linear(sizes[i], sizes[i + 1]))
    if i < #sizes - 1 then self:append(nn.ReLU()) end
  end
end

function MLP:extra_repr()
  return concat(self.sizes, "-")
end

-- The mean cross entropy and the accuracy (a fraction) of the model on
-- inputs x {N, n_in} with class ids y {N} (1-based), in eval mode and
-- without recording gradients; the training mode is restored afterwards.
function MLP:evaluate(x, y)
  local n, was_training = x:size(1), self.training
  local loss_sum, correct = 0, 0
  self:eval()
  glia.no_grad(function()
    for i = 1, n, EVAL_BATCH do
      local rows = min(EVAL_BATCH, n - i + 1)
      local xb, yb = x:narrow(1, i, rows), y:narrow(1, i, rows)
      local logits = self(xb)
      loss_sum = loss_sum + glia.cross_entropy(logits, yb, nil, nil, "sum"):item()
      correct = correct + logits:argmax(-1):eq(yb):to("f32"):sum():item()
    end
  end)
  if was_training then self:train() end
  return loss_sum / n, correct / n
end

return MLP

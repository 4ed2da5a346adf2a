-- models/vit.lua -- a small vision transformer for 28x28 single-channel
-- images (Fashion-MNIST) in which the token mixer and the norm are
-- choices, for comparing SLAB's pieces with the usual ones:
--
--   attention = "softmax"  glia.attention through nn.MultiHeadAttention (not causal)
--             | "sla"      nn.SLA, linear attention over the patch grid
--   norm      = "layer"    nn.LayerNorm
--             | "batch"    plain BatchNorm over the channels of the tokens (every
--                          token of every image a sample): LayerNorm swapped out directly
--             | "prepbn"   nn.PRepBN: LayerNorm handing over to RepBN along a
--                          schedule (warmup, steps) that nn.schedule_step(model) advances
--
--   local ViT = require "models.vit"
--   local model = ViT{attention = "sla", norm = "prepbn", warmup = 100, steps = 1000}
--   local logits = model(x)                      -- x {B,784} or {B,1,28,28} -> {B,10}
--   local loss, acc = model:evaluate(x, y)       -- mean cross entropy and accuracy in [0, 1]
--   local fast = nn.fold(model:eval())           -- "batch"/"prepbn": no norm left
--
-- Config (every field optional): attention ("softmax"), norm ("layer"),
-- image (28, the side), patch (7: a 4x4 grid of 16 tokens; 4 gives 7x7 = 49),
-- dim (64), depth (4), heads (4), mlp_ratio (2), classes (10), warmup (0)
-- and steps (1000) for "prepbn".
--
-- Shapes: patches through a Conv2d of kernel and stride `patch` (1 -> dim
-- channels), flattened row-major into N tokens {B,N,C}, plus a learned
-- positional embedding {N,C}; then `depth` pre-norm blocks
--   x = x + attn(norm1(x));  x = x + fc2(gelu(fc1(norm2(x))))
-- a final norm, the mean over the tokens (no class token: SLA's grid is
-- the patches) and a Linear head onto the classes.
--
-- Folding: each block's fold_pairs() says norm1 feeds the attention's qkv
-- projection and norm2 feeds fc1; the model's says the final norm feeds the
-- head (the mean over tokens commutes with a per-channel affine). So
-- nn.fold of a "batch" or "prepbn" model in eval mode leaves no norm (of a
-- "layer" model, an unchanged copy).
local glia = require "glia"
local nn   = require "glia.nn"
local options = require "glia.options"

local type, ipairs, pairs, error, tostring = type, ipairs, pairs, error, tostring
local format, floor = string.format, math.floor

-- ======================================================= token BatchNorm

-- BatchNorm1d over the last dim of {..., C}: every token a sample. Its
-- state, statistics and fold_affine are BatchNorm1d's; only the view of the
-- input changes (BatchNorm1d itself wants the channels in dim 2).
local TokenBatchNorm = nn.BatchNorm1d:extend("TokenBatchNorm")

function TokenBatchNorm:forward(x)
  local C = self.num_features
  if x:dim() < 2 or x:size(x:dim()) ~= C then
    error(format("models.vit: TokenBatchNorm expected input {..., %d}, got {%s}", C,
                 table.concat(x:shape(), ",")), 2)
  end
  local shape = x:shape()
  return nn.BatchNorm1d.forward(self, x:reshape(x:numel() / C, C)):reshape(shape)
end

-- ================================================================ block

local Block = nn.Module:extend("ViTBlock")

-- cfg: the model's checked config; grid: the token grid {Hs, Ws}.
local function make_norm(cfg)
  local C = cfg.dim
  if cfg.norm == "layer" then return nn.LayerNorm(C) end
  if cfg.norm == "batch" then return TokenBatchNorm(C) end
  return nn.PRepBN(C, { warmup = cfg.warmup, steps = cfg.steps })
end

function Block:__init(cfg, grid)
  local C = cfg.dim
  self.norm1 = make_norm(cfg)
  if cfg.attention == "sla" then
    self.attn = nn.SLA(C, cfg.heads, { grid = grid })
  else
    self.attn = nn.MultiHeadAttention(C, cfg.heads)
  end
  self.norm2 = make_norm(cfg)
  self.fc1 = nn.Linear(C, cfg.mlp_ratio * C)
  self.fc2 = nn.Linear(cfg.mlp_ratio * C, C)
end

function Block:forward(x)
  x = x + self.attn(self.norm1(x))
  return x + self.fc2(glia.gelu(self.fc1(self.norm2(x))))
end

-- (A LayerNorm has no fixed affine to fold: "layer" models declare none.)
function Block:fold_pairs()
  if self.norm1.fold_affine == nil then return {} end
  return { { norm = "norm1", into = { "attn.qkv" } }, { norm = "norm2", into = { "fc1" } } }
end

-- ================================================================== ViT

local ViT = nn.Module:extend("ViT")

local DEFAULTS = { attention = "softmax", norm = "layer", image = 28, patch = 7, dim = 64,
                   depth = 4, heads = 4, mlp_ratio = 2, classes = 10, warmup = 0, steps = 1000 }
local KEYS = { "attention", "norm", "image", "patch", "dim", "depth", "heads", "mlp_ratio",
               "classes", "warmup", "steps" }
local CHOICES = { attention = { softmax = true, sla = true },
                  norm = { layer = true, batch = true, prepbn = true } }

-- The full config: cfg's fields over the defaults, checked.
local function configure(cfg)
  options.check("models.vit", cfg, KEYS, 4)
  local c = {}
  for _, k in ipairs(KEYS) do
    local v = cfg and cfg[k]
    if v == nil then v = DEFAULTS[k] end
    c[k] = v
  end
  for k, allowed in pairs(CHOICES) do
    if not allowed[c[k]] then
      error(format("models.vit: %s must be %s, got %s", k,
                   k == "norm" and '"layer", "batch" or "prepbn"' or '"softmax" or "sla"',
                   tostring(c[k])), 4)
    end
  end
  for _, k in ipairs(KEYS) do
    local v, low = c[k], (k == "warmup" or k == "steps") and 0 or 1
    if not CHOICES[k] and (type(v) ~= "number" or v < low or v ~= floor(v)) then
      error(format("models.vit: %s must be an integer >= %d, got %s", k, low, tostring(v)), 4)
    end
  end
  if c.image % c.patch ~= 0 then
    error(format("models.vit: the image side %d is not a multiple of the patch %d", c.image,
                 c.patch), 4)
  end
  if c.dim % c.heads ~= 0 then
    error(format("models.vit: dim %d is not a multiple of heads %d", c.dim, c.heads), 4)
  end
  return c
end

function ViT:__init(cfg)
  cfg = configure(cfg)
  self.config = cfg
  local g = floor(cfg.image / cfg.patch)
  self.grid = { g, g }
  self.patch_embed = nn.Conv2d(1, cfg.dim, cfg.patch, { stride = cfg.patch })
  self.pos = nn.Parameter(glia.empty(g * g, cfg.dim))
  nn.init.normal_(self.pos, 0, 0.02)
  local blocks = {}
  for i = 1, cfg.depth do blocks[i] = Block(cfg, self.grid) end
  self.blocks = nn.ModuleList(blocks)
  self.norm = make_norm(cfg)
  self.head = nn.Linear(cfg.dim, cfg.classes)
end

-- x {B, side*side} (as glia.data gives Fashion-MNIST) or {B,1,side,side}
-- -> logits {B, classes}.
function ViT:forward(x)
  local s = self.config.image
  if x:dim() == 2 and x:size(2) == s * s then
    x = x:reshape(x:size(1), 1, s, s)
  elseif not (x:dim() == 4 and x:size(2) == 1 and x:size(3) == s and x:size(4) == s) then
    error(format("models.vit: expected images {B,%d} or {B,1,%d,%d}, got {%s}", s * s, s, s,
                 table.concat(x:shape(), ",")), 2)
  end
  local B, C = x:size(1), self.config.dim
  local h = self.patch_embed(x):reshape(B, C, -1):transpose(2, 3) + self.pos -- {B,N,C}
  for _, block in ipairs(self.blocks) do h = block(h) end
  return self.head(self.norm(h):mean(2))
end

function ViT:fold_pairs()
  if self.norm.fold_affine == nil then return {} end
  return { { norm = "norm", into = { "head" } } }
end

function ViT:extra_repr()
  local c = self.config
  return format("attention=%s, norm=%s, %dx%d patches of %d, dim=%d, depth=%d, heads=%d", c.attention,
                c.norm, self.grid[1], self.grid[2], c.patch, c.dim, c.depth, c.heads)
end

-- The mean cross entropy and the accuracy of the model on x, y, in eval
-- mode without gradients, in batches (models/mlp.lua's, which any
-- classifier taking {N, ...} rows can use).
ViT.evaluate = require("models.mlp").evaluate

-- The parts, for benchmarks and tests: ViT.Block(cfg, grid) takes a config
-- as ViT's (fields attention, norm, dim, heads, mlp_ratio, warmup, steps;
-- no defaults) and the token grid {Hs, Ws}.
ViT.Block, ViT.TokenBatchNorm = Block, TokenBatchNorm

return ViT

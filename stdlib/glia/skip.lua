-- glia.skip -- layer skipping and layer dropping for decoder-only
-- transformers built from glia.nn.TransformerBlock (models/gpt.lua and
-- any model whose blocks are TransformerBlocks).
--
--   local skip = require "glia.skip"
--   local p = skip.plan_uniform(8, 2)           -- Unified Layer Skipping: decode through 1,3,5,8
--   local q = skip.plan_drop(8, {attn = {6, 7}, mlp = {}, block = {}})  -- permanent drops
--   model:set_plan(skip.compose(p, q))          -- or skip.set_plan(model, plan)
--   skip.plan_keep(8, {1, 2, 3, 4})             -- decode through the listed layers
--   skip.parse(8, "uls:2+attn:6,7")             -- a plan from text (command lines)
--   model:generate(prompt, 100, {plan = p})
--   local caches = skip.kv_compact(model, B, cap)  -- caches for kept attention only
--   skip.kv_release(caches, model)              -- after the prompt: drop the skipped layers'
--   local loss = skip.loss(model, x, y, P)      -- ULS fine-tuning: prompt P, loss on the rest
--   local s = skip.similarity(model, batches)   -- per-layer cosine similarity, input vs output
--   local plan = skip.select(s, 2, {mode = "attn"})
--   local c = skip.contrib(model, batches)      -- how much each layer writes
--   local e = skip.effect(model, batches)       -- what skipping a layer does to later ones
--
-- Layers are numbered 1..L (glia is 1-based: the papers' layer 0 is 1 here).
--
-- A plan is a table {layers = L, attn = {...}, mlp = {...}, decode = {...}}:
-- attn and mlp list the sub-layers dropped for good (in the prompt, in
-- generation and in training: the residual stream passes them unchanged
-- and their norms are not evaluated either); decode, when present, lists
-- the layers that generated tokens run through (Unified Layer Skipping:
-- the prompt runs every layer, each new token only these; the other
-- layers' caches keep the prompt and are never read again, so they can be
-- freed after the prefill, see kv_release). Plans are static: every token
-- of every sequence runs the same layers, which keeps batching and the KV
-- cache intact and the speedup predictable.
--
-- How few layers a plan may leave: a layer runs when a generated token
-- computes any of its sub-layers (it is neither dropped whole nor left out
-- of decode). A plan that skips anything must leave at least two layers
-- running, or every layer of a model with fewer than two: plan_drop(1, {})
-- and plan_uniform(1, 1) are the (empty) plan of a one-layer model, while
-- plan_drop(2, {block = {1}}) and plan_uniform(8, 5) (one layer) fail. The
-- lists are lists of layer indices (integers in 1..L, keys 1..n). Every
-- builder checks the plan it makes, and everything that applies one
-- (set_plan and so model:set_plan and generate's plan, compose, select's
-- base) checks it again, so a plan edited after it was built fails where
-- it is used rather than running a model of no layers.
--
-- The execution lives in TransformerBlock:forward (glia.nn.transformer),
-- which reads two fields this module sets on each block: skip (its part of
-- the plan) and prompt_len (how many of the input's leading positions are
-- prompt: nil all, 0 none). A block the plan leaves whole keeps its fused
-- decode path (glia.decoder_block).
local glia = require "glia"
local options = require "glia.options"

local floor, max, min, sqrt, huge, log = math.floor, math.max, math.min, math.sqrt, math.huge,
  math.log
local type, format, ipairs, pairs, tostring, concat, sort, setmetatable, rawset, rawget, pcall =
  type, string.format, ipairs, pairs, tostring, table.concat, table.sort, setmetatable, rawset,
  rawget, pcall
local error = glia.error -- blames the user's line, never the stdlib's

local unpack = table.unpack or unpack -- luacheck: ignore (LuaJIT)
local tonumber, getmetatable = tonumber, getmetatable

local skip = {}

-- ================================================================ plans

local Plan = {}
Plan.__index = Plan

local function is_int(v) return type(v) == "number" and v == floor(v) and v > -huge and v < huge end

local function check_layers(where, L)
  if not is_int(L) or L < 1 then
    error(format("%s: the layer count must be a positive integer, got %s", where, tostring(L)), 3)
  end
end

-- A sorted copy of the set's keys.
local function sorted_keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  sort(out)
  return out
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v] = true end
  return s
end

-- The number of layers a generated token computes something in.
local function layers_run(plan)
  local A, M, n = set_of(plan.attn), set_of(plan.mlp), 0
  local D = plan.decode and set_of(plan.decode)
  for l = 1, plan.layers do
    if (not D or D[l]) and not (A[l] and M[l]) then n = n + 1 end
  end
  return n
end

-- A value for an error message: strings quoted, so "3" is not read as 3.
local function shown(v) return type(v) == "string" and format("%q", v) or tostring(v) end

-- A tensor's dtype and shape ("i64 {2,5}"), or another value's type.
local function describe(v)
  if not glia.is_tensor(v) then return type(v) end
  return v:dtype() .. " {" .. concat(v:shape(), ",") .. "}"
end

-- Fails (naming where and what) unless v is integer token ids {B,T}.
local function check_ids(where, what, v, level)
  if not glia.is_tensor(v) or v:dim() ~= 2 or (v:dtype() ~= "i64" and v:dtype() ~= "i32") then
    error(format("%s: %s must be integer token ids {B,T}, got %s", where, what, describe(v)),
          level + 1)
  end
end

-- Fails (naming where) unless list is a list of layer indices: a sequence
-- (keys 1..n, no holes, no other keys) of integers in 1..L. what names
-- the list in the message.
local function check_list(where, L, list, what, level)
  if type(list) ~= "table" then
    error(format("%s: %s must be a list of layer indices, got %s", where, what, type(list)),
          level + 1)
  end
  local n = 0
  for _ in pairs(list) do n = n + 1 end
  for k in pairs(list) do
    if not is_int(k) or k < 1 or k > n then
      error(format("%s: %s must be a list of layer indices, got a table with the key %s",
                   where, what, shown(k)), level + 1)
    end
  end
  for i = 1, n do
    local l = list[i]
    if type(l) ~= "number" then
      error(format("%s: %s entry %d must be a layer index in 1..%d, got the %s %s", where, what,
                   i, L, type(l), shown(l)), level + 1)
    elseif not is_int(l) then
      error(format("%s: %s layer %s is not an integer layer index in 1..%d", where, what,
                   tostring(l), L), level + 1)
    elseif l < 1 or l > L then
      error(format("%s: %s layer %s is out of range 1..%d", where, what, tostring(l), L),
            level + 1)
    end
  end
end

-- Fails (naming where) unless p is a well-formed plan: made by this
-- module, its lists lists of layer indices in 1..layers, and, when it
-- skips anything, keeping min(2, layers) layers running (the rule in the
-- header). The builders check what they make and the appliers (set_plan,
-- compose, select, so generate and the training loss) what they are
-- given, so a plan edited after it was built is caught where it is used.
local function validate(where, p, level)
  if not skip.is_plan(p) then
    error(format("%s: expected a plan (from glia.skip), got %s", where, type(p)), level + 1)
  end
  local L = p.layers
  if not is_int(L) or L < 1 then
    error(format("%s: the plan's layer count must be a positive integer, got %s", where,
                 shown(L)), level + 1)
  end
  check_list(where, L, p.attn, "the plan's attn", level + 1)
  check_list(where, L, p.mlp, "the plan's mlp", level + 1)
  if p.decode ~= nil then check_list(where, L, p.decode, "the plan's decode", level + 1) end
  if not p:empty() then
    local n, need = layers_run(p), min(2, L)
    if n < need then
      error(format("%s: the plan keeps %d of %d layers; at least %s must run", where, n, L,
                   need == 2 and "two" or "one"), level + 1)
    end
  end
  return p
end

-- A plan from sets of dropped sub-layers and the decode keep-list (nil:
-- every layer), validated.
local function make(where, L, A, M, decode, level)
  local p = setmetatable({ layers = L, attn = sorted_keys(A), mlp = sorted_keys(M),
                           decode = decode }, Plan)
  validate(where, p, level + 1)
  return p
end

function Plan:__tostring()
  local parts = { format("layers=%d", self.layers) }
  if #self.attn > 0 then parts[#parts + 1] = "attn=" .. concat(self.attn, ",") end
  if #self.mlp > 0 then parts[#parts + 1] = "mlp=" .. concat(self.mlp, ",") end
  if self.decode then parts[#parts + 1] = "decode=" .. concat(self.decode, ",") end
  return "skip plan{" .. concat(parts, " ") .. "}"
end

-- True when the plan changes nothing.
function Plan:empty()
  return #self.attn == 0 and #self.mlp == 0 and self.decode == nil
end

-- The attention layers that keep their sub-layer (and so need a KV cache).
function Plan:attn_kept()
  local A, out = set_of(self.attn), {}
  for l = 1, self.layers do if not A[l] then out[#out + 1] = l end end
  return out
end

function skip.is_plan(v) return getmetatable(v) == Plan end

-- The layers generated tokens run under Unified Layer Skipping for a
-- target speedup s (a number >= 1): n_keep = floor(L / s) layers, first
-- and last always, the rest every delta = floor(L / (n_keep - 1)) layers
-- from the bottom (the reference rule: the top gap may be wider), or with
-- rule = "even" at round(i (L-1) / (n_keep-1)). s = 1 is the empty plan.
function skip.plan_uniform(L, s, opts)
  local where = "glia.skip.plan_uniform"
  opts = options.check(where, opts, { "rule" }, 1)
  check_layers(where, L)
  if type(s) ~= "number" or s ~= s or s < 1 then
    error(format("%s: the target speedup s must be a number >= 1, got %s", where, tostring(s)), 2)
  end
  local rule = opts.rule or "reference"
  if rule ~= "reference" and rule ~= "even" then
    error(format("%s: rule must be \"reference\" or \"even\", got %s", where, tostring(rule)), 2)
  end
  local n_keep = floor(L / s)
  if n_keep >= L then
    local p = make(where, L, {}, {}, nil, 2)
    return p
  end
  if n_keep < 2 then
    error(format("%s: s = %s keeps %d of %d layers; at least %s must run", where, tostring(s),
                 n_keep, L, L >= 2 and "two" or "one"), 2)
  end
  local keep = { [0] = true, [L - 1] = true } -- 0-based here, as the rule is written
  if rule == "reference" then
    local delta, count = floor(L / (n_keep - 1)), 2
    for i = 1, L - 2 do
      if i % delta == 0 and count < n_keep then keep[i], count = true, count + 1 end
    end
  else
    for i = 1, n_keep - 2 do keep[floor(i * (L - 1) / (n_keep - 1) + 0.5)] = true end
  end
  local decode = {}
  for i = 0, L - 1 do if keep[i] then decode[#decode + 1] = i + 1 end end
  local p = make(where, L, {}, {}, decode, 2)
  return p
end

local function add_layers(where, L, set, list, what, level)
  if list == nil then return end
  check_list(where, L, list, what, level + 1)
  for _, l in ipairs(list) do set[l] = true end
end

-- plan_drop's body, its errors naming where.
local function drop(where, L, spec, level)
  local A, M, B = {}, {}, {}
  add_layers(where, L, A, spec.attn, "attn", level + 1)
  add_layers(where, L, M, spec.mlp, "mlp", level + 1)
  add_layers(where, L, B, spec.block, "block", level + 1)
  for l in pairs(B) do A[l], M[l] = true, true end
  local p = make(where, L, A, M, nil, level + 1)
  return p
end

-- A plan dropping sub-layers for good: spec = {attn = {...}, mlp = {...},
-- block = {...}} (lists of layer numbers; block drops both sub-layers).
function skip.plan_drop(L, spec)
  local where = "glia.skip.plan_drop"
  check_layers(where, L)
  spec = options.check(where, spec, { "attn", "mlp", "block" }, 1)
  local p = drop(where, L, spec, 2)
  return p
end

-- A plan whose generated tokens run the listed layers only (the prompt
-- runs every layer), e.g. skipping the top layers: plan_keep(8, {1, 2, 3, 4}).
function skip.plan_keep(L, layers)
  local where = "glia.skip.plan_keep"
  check_layers(where, L)
  local K = {}
  check_list(where, L, layers, "kept", 2)
  for _, l in ipairs(layers) do K[l] = true end
  local keep = sorted_keys(K)
  local p = make(where, L, {}, {}, #keep < L and keep or nil, 2)
  return p
end

-- compose's body over plans[1..n] (n counts nils too), its errors naming where.
local function compose(where, plans, n, level)
  if n == 0 then error(where .. ": expected at least one plan", level + 1) end
  local L, A, M, D = nil, {}, {}, nil
  for i = 1, n do
    local p = plans[i]
    if not skip.is_plan(p) then
      error(format("%s: plan %d must be a plan (from glia.skip), got %s", where, i, type(p)),
            level + 1)
    end
    validate(where, p, level + 1)
    if L and p.layers ~= L then
      error(format("%s: plan %d is for %d layers, plan 1 for %d", where, i, p.layers, L),
            level + 1)
    end
    L = p.layers
    for _, l in ipairs(p.attn) do A[l] = true end
    for _, l in ipairs(p.mlp) do M[l] = true end
    if p.decode then
      local keep = set_of(p.decode)
      if D then for l in pairs(D) do if not keep[l] then D[l] = nil end end else D = keep end
    end
  end
  local p = make(where, L, A, M, D and sorted_keys(D), level + 1)
  return p
end

-- The plan doing everything the given plans do (all for the same depth):
-- the union of their drops; generated tokens run the layers every plan
-- lets them run.
function skip.compose(...)
  local p = compose("glia.skip.compose", { ... }, select("#", ...), 2)
  return p
end

-- A plan from text (command lines): "uls:S" (plan_uniform), "attn:3,5",
-- "mlp:2", "block:7", joined with "+" to compose, e.g. "uls:2+attn:6,7".
function skip.parse(L, text)
  local where = "glia.skip.parse"
  if type(text) ~= "string" or text == "" then
    error(where .. ": expected a plan text such as \"uls:2\" or \"attn:3,5+mlp:7\"", 2)
  end
  local plans = {}
  for part in text:gmatch("[^+]+") do
    local kind, rest = part:match("^%s*(%a+)%s*:%s*(.-)%s*$")
    if kind == "uls" and tonumber(rest) then
      plans[#plans + 1] = skip.plan_uniform(L, tonumber(rest))
    elseif kind == "attn" or kind == "mlp" or kind == "block" then
      local list = {}
      for n in rest:gmatch("[^,%s]+") do
        local v = tonumber(n)
        if not v then error(format("%s: %q is not a layer number in %q", where, n, part), 2) end
        list[#list + 1] = v
      end
      plans[#plans + 1] = skip.plan_drop(L, { [kind] = list })
    else
      error(format("%s: cannot read %q (expected uls:S, attn:i,j, mlp:i,j or block:i,j)",
                   where, part), 2)
    end
  end
  local p = compose(where, plans, #plans, 2)
  return p
end

-- ============================================================ models

-- The model's TransformerBlocks in order: model.blocks when it is a list
-- of them, else every TransformerBlock in the module tree.
function skip.blocks(model, where)
  where = where or "glia.skip"
  local list = {}
  local blocks = type(model) == "table" and rawget(model, "blocks")
  if blocks and type(blocks.children) == "function" then
    for i, b in ipairs(blocks:children()) do list[i] = b end
  elseif type(model) == "table" and type(model.modules) == "function" then
    for _, m in ipairs(model:modules()) do
      if type(m.attn_update) == "function" then list[#list + 1] = m end
    end
  end
  if #list == 0 then error(where .. ": the model has no TransformerBlocks", 3) end
  for i, b in ipairs(list) do
    if type(b.attn_update) ~= "function" then
      error(format("%s: block %d is not a TransformerBlock (a %s)", where, i,
                   tostring(b.__name)), 3)
    end
  end
  return list
end

local function check_depth(where, plan, n, level)
  validate(where, plan, level + 1)
  if plan.layers ~= n then
    error(format("%s: the plan is for %d layers, the model has %d", where, plan.layers, n),
          level + 1)
  end
end

-- Puts plan in force on the model (nil or an empty plan: none); returns
-- the model. The plan stays until the next set_plan. where (optional)
-- names the caller in errors (models.gpt's set_plan and generate).
function skip.set_plan(model, plan, where)
  where = type(where) == "string" and where or "glia.skip.set_plan"
  local blocks = skip.blocks(model, where)
  if plan ~= nil then check_depth(where, plan, #blocks, 2) end
  if plan and plan:empty() then plan = nil end
  local A = plan and set_of(plan.attn) or {}
  local M = plan and set_of(plan.mlp) or {}
  local D = plan and plan.decode and set_of(plan.decode)
  for l, b in ipairs(blocks) do
    local s = { attn = A[l] or nil, mlp = M[l] or nil, decode = (D and not D[l]) or nil }
    rawset(b, "skip", (s.attn or s.mlp or s.decode) and s or nil)
  end
  rawset(model, "plan", plan)
  return model
end

-- The plan in force (nil: none).
function skip.get_plan(model) return rawget(model, "plan") end

-- How many leading positions of the next forwards are prompt: nil (all:
-- full depth, the default), 0 (generated tokens: a Unified Layer Skipping
-- plan's skipped layers are passed) or P (prompt then response, for
-- training under the plan and the cache-free reference).
function skip.set_prompt_len(model, P)
  if P ~= nil and (not is_int(P) or P < 0) then
    error("glia.skip.set_prompt_len: expected nil or a count >= 0, got " .. tostring(P), 2)
  end
  for _, b in ipairs(skip.blocks(model, "glia.skip.set_prompt_len")) do rawset(b, "prompt_len", P) end
end

-- The training loss under the plan in force (Unified Layer Skipping's
-- recipe): the first P positions of x {B,T} are the prompt, run through
-- every layer; the rest is the response, run through the plan's decode
-- layers; the mean cross entropy counts the predictions of response tokens
-- only (from position P on). The model's output must be logits {B,T,V}.
-- Returns the loss and the logits.
function skip.loss(model, x, y, P)
  local where = "glia.skip.loss"
  check_ids(where, "x", x, 2)
  check_ids(where, "y", y, 2)
  if y:size(1) ~= x:size(1) or y:size(2) ~= x:size(2) then
    error(format("%s: y %s must have x's shape %s", where, describe(y), describe(x)), 2)
  end
  local T = x:size(2)
  if T < 2 then
    error(format("%s: x %s is too short: a prompt and a response need T >= 2", where,
                 describe(x)), 2)
  end
  if not is_int(P) or P < 1 or P >= T then
    error(format("%s: the prompt length must be in 1..%d for sequences of %d, got %s", where,
                 T - 1, T, tostring(P)), 2)
  end
  skip.set_prompt_len(model, P)
  local ok, logits = pcall(model, x)
  skip.set_prompt_len(model, nil)
  if not ok then error(logits, 0) end
  return glia.cross_entropy(logits:narrow(2, P, T - P + 1), y:narrow(2, P, T - P + 1)), logits
end

-- ============================================================ KV caches

-- Fails (naming where) unless caches maps layers to KV caches (each with
-- its key and value buffers k and v), as kv_compact and new_caches make.
local function check_caches(where, caches, level)
  if type(caches) ~= "table" then
    error(format("%s: expected the caches (layer -> KV cache, from kv_compact or "
                 .. "model:new_caches), got %s", where, type(caches)), level + 1)
  end
  for l, c in pairs(caches) do
    local ok = (type(c) == "table" or type(c) == "userdata") and glia.is_tensor(c.k)
               and glia.is_tensor(c.v)
    if not ok then
      error(format("%s: caches[%s] is not a KV cache (with k and v buffers): a %s", where,
                   shown(l), type(c)), level + 1)
    end
  end
end

-- One cache per block whose attention the plan in force keeps (B
-- sequences, capacity positions): caches[l] is nil for a dropped one. The
-- second result maps each layer to its slot among the kept (kvidx[l] = 1 +
-- the number of kept attention layers below l; nil when dropped).
function skip.kv_compact(model, B, capacity)
  local caches, kvidx, n = {}, {}, 0
  for l, b in ipairs(skip.blocks(model, "glia.skip.kv_compact")) do
    if not (b.skip and b.skip.attn) then
      n = n + 1
      caches[l], kvidx[l] = b:new_cache(B, capacity), n
    end
  end
  return caches, kvidx
end

-- Drops (for the garbage collector) the caches of the layers generated
-- tokens skip under the plan in force, once the prompt is in: they are
-- never read again. Returns the bytes released.
function skip.kv_release(caches, model)
  check_caches("glia.skip.kv_release", caches, 2)
  local freed = 0
  for l, b in ipairs(skip.blocks(model, "glia.skip.kv_release")) do
    local c = caches[l]
    if c and b.skip and b.skip.decode then
      freed = freed + (c.k:numel() + c.v:numel()) * 4
      caches[l] = nil
    end
  end
  return freed
end

-- The bytes the caches' key and value buffers hold (caches: layer -> cache).
function skip.kv_bytes(caches)
  check_caches("glia.skip.kv_bytes", caches, 2)
  local n = 0
  for _, c in pairs(caches) do n = n + (c.k:numel() + c.v:numel()) * 4 end
  return n
end

-- ========================================================= calibration

-- Calibration batches checked: a token tensor {B,T} or a list of them,
-- none empty (an empty batch would average over no tokens: NaN scores).
local function check_batches(where, batches)
  if glia.is_tensor(batches) then batches = { batches } end
  if type(batches) ~= "table" or #batches == 0 then
    error(where .. ": expected calibration batches: a token tensor {B,T} or a list of them", 3)
  end
  for i, x in ipairs(batches) do
    check_ids(where, format("calibration batch %d", i), x, 3)
    if x:numel() == 0 then
      error(format("%s: calibration batch %d is empty (%s); each needs at least one token",
                   where, i, describe(x)), 3)
    end
  end
  return batches
end

-- Runs fn(model) in eval mode without autograd with every block's forward
-- replaced by one that calls observe(l, x, a, y) (block input, after the
-- attention sub-layer, after the MLP sub-layer; dropped sub-layers pass x
-- through), and puts everything back, even on error.
local function observed(model, blocks, observe, fn)
  local was_training = model.training
  model:eval()
  for l, b in ipairs(blocks) do
    rawset(b, "forward", function(self, x)
      local s = self.skip or {}
      local a = s.attn and x or x + self:attn_update(x)
      local y = s.mlp and a or a + self:mlp_update(a)
      observe(l, x, a, y)
      return y
    end)
  end
  local ok, err = pcall(glia.no_grad, fn, model)
  for _, b in ipairs(blocks) do rawset(b, "forward", nil) end
  model:train(was_training)
  if not ok then error(err, 0) end
end

local function flat(t) -- a tensor's values as a flat Lua list
  return t:contiguous():view(t:numel()):totable()
end

-- Per-token <x,y>, ||x||^2, ||y||^2 as flat Lua lists (f32 sums over the
-- model dimension; everything after them in doubles).
local function dots(x, y)
  return flat((x * y):sum(-1)), flat((x * x):sum(-1)), flat((y * y):sum(-1))
end

local COS_FLOOR = 1e-8

-- Sum over tokens of cos(x_t, y_t) with the spec's norm floor, in doubles.
local function cos_sum(x, y)
  local xy, xx, yy = dots(x, y)
  local s = 0
  for i = 1, #xy do s = s + xy[i] / max(sqrt(xx[i] * yy[i]), COS_FLOOR) end
  return s, #xy
end

-- The mean cosine similarity between each module's input and output
-- residual stream over the calibration tokens (LLM-Drop's statistic):
-- {layers = L, attn = {...}, mlp = {...}, block = {...}, tokens = N,
-- plan = the plan in force}. Per-token dot products are f32 sums over the
-- model dimension; the cosines and their running sums are doubles. A
-- module the plan already drops scores -inf.
function skip.similarity(model, batches)
  local where = "glia.skip.similarity"
  local blocks = skip.blocks(model, where)
  batches = check_batches(where, batches)
  local L = #blocks
  local sum = { attn = {}, mlp = {}, block = {} }
  for l = 1, L do sum.attn[l], sum.mlp[l], sum.block[l] = 0, 0, 0 end
  local tokens = 0
  for _, x in ipairs(batches) do
    observed(model, blocks, function(l, h, a, y)
      local s = blocks[l].skip or {}
      if not s.attn then sum.attn[l] = sum.attn[l] + cos_sum(h, a) end
      if not s.mlp then sum.mlp[l] = sum.mlp[l] + cos_sum(a, y) end
      sum.block[l] = sum.block[l] + cos_sum(h, y)
    end, function(m) m(x) end)
    tokens = tokens + x:numel()
  end
  local out = { layers = L, attn = {}, mlp = {}, block = {}, tokens = tokens,
                plan = skip.get_plan(model) }
  for l = 1, L do
    local s = blocks[l].skip or {}
    out.attn[l] = s.attn and -huge or sum.attn[l] / tokens
    out.mlp[l] = s.mlp and -huge or sum.mlp[l] / tokens
    out.block[l] = (s.attn and s.mlp) and -huge or sum.block[l] / tokens
  end
  return out
end

local KINDS = { attn = { "attn" }, mlp = { "mlp" }, joint = { "attn", "mlp" }, block = { "block" } }
local KIND_NAME = { attn = "attention sub-layers", mlp = "MLP sub-layers",
                    joint = "attention and MLP sub-layers", block = "blocks" }

-- The candidates of a mode, highest score first (ties: attention before
-- MLP, then the lower layer), dropped ones (-inf) left out.
local function ranked(scores, mode)
  local c = {}
  for k, kind in ipairs(KINDS[mode]) do
    for l = 1, scores.layers do
      local v = scores[kind][l]
      if v > -huge then c[#c + 1] = { kind = kind, layer = l, score = v, order = k } end
    end
  end
  sort(c, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    if a.order ~= b.order then return a.order < b.order end
    return a.layer < b.layer
  end)
  return c
end

-- The plan dropping the picks on top of base (nil: none), its errors
-- naming where.
local function drop_plan(where, L, base, picks, level)
  local spec = { attn = {}, mlp = {}, block = {} }
  for _, p in ipairs(picks) do spec[p.kind][#spec[p.kind] + 1] = p.layer end
  local p = drop(where, L, spec, level + 1)
  if base then p = compose(where, { base, p }, 2, level + 1) end
  return p
end

-- Fails (naming where) unless scores has a number (not NaN) for every
-- layer in each list mode ranks, and a valid plan for its depth if any.
local function check_scores(where, scores, mode, level)
  local L = scores.layers
  for _, kind in ipairs(KINDS[mode]) do
    local list = scores[kind]
    if type(list) ~= "table" then
      error(format("%s: the scores have no %s list (mode %s ranks it), got %s", where, kind,
                   mode, type(list)), level + 1)
    end
    for l = 1, L do
      local v = list[l]
      if type(v) ~= "number" or v ~= v then
        error(format("%s: scores.%s[%d] must be a number, got %s", where, kind, l,
                     v ~= v and "NaN" or shown(v)), level + 1)
      end
    end
  end
  if scores.plan ~= nil then check_depth(where, scores.plan, L, level + 1) end
end

-- Chooses n modules to drop from similarity scores: mode "attn" (the
-- default), "mlp", "joint" (attention and MLP sub-layers ranked together)
-- or "block"; the most similar (least important) go first. iterative =
-- true drops one at a time, recomputing the scores on the model pruned so
-- far (needs model and batches in opts). Returns the plan (the scores'
-- plan composed with the drops) and the list of picks {kind, layer, score}
-- in the order chosen.
function skip.select(scores, n, opts)
  local where = "glia.skip.select"
  opts = options.check(where, opts, { "mode", "iterative", "model", "batches" }, 1)
  if type(scores) ~= "table" or not is_int(scores.layers) or scores.layers < 1 then
    error(where .. ": expected scores from glia.skip.similarity (layers = L and per-layer "
          .. "lists)", 2)
  end
  local mode = opts.mode or "attn"
  if not KINDS[mode] then
    error(format("%s: mode must be attn, mlp, joint or block, got %s", where, tostring(mode)), 2)
  end
  check_scores(where, scores, mode, 2)
  if not is_int(n) or n < 0 then
    error(format("%s: n must be a count >= 0, got %s", where, tostring(n)), 2)
  end
  local L, base = scores.layers, scores.plan
  local avail = #ranked(scores, mode)
  if n > avail then
    error(format("%s: cannot drop %d %s: %d remain of %d layers", where, n, KIND_NAME[mode],
                 avail, L), 2)
  end
  local picks = {}
  if not opts.iterative then
    local c = ranked(scores, mode)
    for i = 1, n do picks[i] = c[i] end
  else
    local model, batches = opts.model, opts.batches
    if not model or not batches then
      error(where .. ": iterative selection needs opts.model and opts.batches", 2)
    end
    local before = skip.get_plan(model)
    local ok, err = pcall(function()
      local s = scores
      for i = 1, n do
        picks[i] = ranked(s, mode)[1]
        if i < n then
          skip.set_plan(model, drop_plan(where, L, base, picks, 1))
          s = skip.similarity(model, batches)
        end
      end
    end)
    skip.set_plan(model, before)
    if not ok then error(err, 0) end
  end
  local p = drop_plan(where, L, base, picks, 2)
  return p, picks
end

-- ========================================================= diagnostics

-- sum_t ||u_t|| / max(||w_t||, floor) over the tokens of u, w {..., C}.
local function ratio_sum(u, w)
  local uu, ww = flat((u * u):sum(-1)), flat((w * w):sum(-1))
  local s = 0
  for i = 1, #uu do s = s + sqrt(uu[i]) / max(sqrt(ww[i]), COS_FLOOR) end
  return s
end

-- How much each layer writes into the residual stream (Csordas et al.):
-- with Delta_l = h_{l+1} - h_l, contrib[l] = mean_t ||Delta_l|| / ||h_l||
-- and align[l] = mean_t cos(Delta_l, h_l) (< 0 erases, ~0 adds new
-- directions, > 0 amplifies). Returns {layers, contrib, align, tokens}.
function skip.contrib(model, batches)
  local where = "glia.skip.contrib"
  local blocks = skip.blocks(model, where)
  batches = check_batches(where, batches)
  local L, c, a, tokens = #blocks, {}, {}, 0
  for l = 1, L do c[l], a[l] = 0, 0 end
  for _, x in ipairs(batches) do
    observed(model, blocks, function(l, h, _, y)
      local d = y - h
      c[l] = c[l] + ratio_sum(d, h)
      a[l] = a[l] + cos_sum(d, h)
    end, function(m) m(x) end)
    tokens = tokens + x:numel()
  end
  for l = 1, L do c[l], a[l] = c[l] / tokens, a[l] / tokens end
  return { layers = L, contrib = c, align = a, tokens = tokens }
end

-- What skipping one layer s (both sub-layers) does: effect[s][l] = mean_t
-- ||Delta_l^(skip s) - Delta_l|| / ||Delta_l|| for the layers l > s, and
-- out[s] = mean_t KL(p_full || p_skip s) of the next-token distributions
-- (the model's output must be logits {B,T,V}). Returns {layers, effect,
-- out, tokens}.
function skip.effect(model, batches)
  local where = "glia.skip.effect"
  local blocks = skip.blocks(model, where)
  batches = check_batches(where, batches)
  local L, eff, out, tokens = #blocks, {}, {}, 0
  for s = 1, L do
    eff[s], out[s] = {}, 0
    for l = s + 1, L do eff[s][l] = 0 end
  end
  for _, x in ipairs(batches) do
    local full, logp = {}, nil
    observed(model, blocks, function(l, h, _, y) full[l] = y - h end,
             function(m) logp = glia.log_softmax(m(x), -1) end)
    for s = 1, L do
      local b, saved = blocks[s], rawget(blocks[s], "skip")
      rawset(b, "skip", { attn = true, mlp = true })
      local ok, err = pcall(observed, model, blocks, function(l, h, _, y)
        if l > s then eff[s][l] = eff[s][l] + ratio_sum(y - h - full[l], full[l]) end
      end, function(m)
        local lq = glia.log_softmax(m(x), -1)
        out[s] = out[s] + (glia.exp(logp) * (logp - lq)):sum():item()
      end)
      rawset(b, "skip", saved)
      if not ok then error(err, 0) end
    end
    tokens = tokens + x:numel()
  end
  for s = 1, L do
    out[s] = out[s] / tokens
    for l = s + 1, L do eff[s][l] = eff[s][l] / tokens end
  end
  return { layers = L, effect = eff, out = out, tokens = tokens }
end

-- ================================================================ output

-- A Markdown table of per-layer lists: columns = {{"name", list}, ...}.
function skip.layer_table(columns, digits)
  local fmtv = "%." .. (digits or 4) .. "f"
  local head, rule = { "layer" }, { "---:" }
  for i, c in ipairs(columns) do head[i + 1], rule[i + 1] = c[1], "---:" end
  local lines = { "| " .. concat(head, " | ") .. " |", "| " .. concat(rule, " | ") .. " |" }
  local n = 0
  for _, c in ipairs(columns) do n = max(n, #c[2]) end
  for l = 1, n do
    local row = { tostring(l) }
    for i, c in ipairs(columns) do
      local v = c[2][l]
      row[i + 1] = (v == nil or v == -huge) and "-" or format(fmtv, v)
    end
    lines[#lines + 1] = "| " .. concat(row, " | ") .. " |"
  end
  return concat(lines, "\n") .. "\n"
end

-- An SVG line plot of per-layer lists (glia.plot): columns as above.
function skip.plot_layers(path, columns, opts)
  opts = opts or {}
  local series = {}
  for i, c in ipairs(columns) do
    local x, y = {}, {}
    for l = 1, #c[2] do x[l], y[l] = l, c[2][l] == -huge and 0 / 0 or c[2][l] end
    series[i] = { name = c[1], x = x, y = y }
  end
  return require("glia.plot").loss_curve(path, { series = series, title = opts.title,
    xlabel = opts.xlabel or "layer", ylabel = opts.ylabel or "", logy = opts.logy })
end

return skip

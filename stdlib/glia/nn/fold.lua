-- glia.nn.fold -- nn.fold(model): an inference copy of model in which every
-- batch normalization (BatchNorm1d, BatchNorm2d, RepBN, PRepBN) is folded
-- into a neighbouring linear layer and replaced by nn.Identity, so no
-- normalization runs in the forward. The model is not changed.
--
-- With frozen running statistics such a norm is a per-channel affine map
-- y = a o x + b (its fold_affine(); for RepBN a includes eta). Two folds:
--   norm before a Linear y = W u + c (W {out, C}):  W' = W diag(a), c' = c + W b
--   norm after a Linear/Conv z = W u + c:           W' = diag(a) W (output row or
--                                                   filter o scaled by a_o), c' = a o c + b
-- creating the bias when the layer had none. (A BatchNorm1d before a Linear
-- is taken to see {N,C}: the Linear must act on its channels.) Modules between the two that
-- map y = a o x + b to a o f(x) + b (averaging over tokens or positions,
-- reshapes keeping the channel, Identity, Dropout in eval) are crossed:
-- nn.Identity, nn.Dropout, Flatten, AdaptiveAvgPool2d and any module whose
-- class sets `fold_transparent = true`. So "final norm -> average pool ->
-- head" folds into the head.
--
-- Where fold looks for neighbours:
--  1. A module may list its own: a method fold_pairs() returning entries
--       { norm = "norm1", into = { "attn.q", "attn.k", "attn.v" } }  -- norm feeds these
--       { norm = "norm",  from = "proj" }                             -- norm reads proj's output
--     with paths relative to the module (dotted for grandchildren). This is
--     how a block whose forward is code (pre-norm attention and MLP, q/k/v
--     or SwiGLU gate/up projections fed by one norm) says what feeds what.
--  2. In a Sequential, a norm folds into the Linear after it (crossing
--     transparent modules), else into the Linear or Conv before it.
-- The copy's layers get new parameter tensors (a weight tied elsewhere,
-- like an embedding shared with the head, stays as it was there).
--
-- Errors: a module of the model in training mode (fold uses the running
-- statistics: call model:eval() first); a norm left with no linear
-- neighbour; a neighbour whose size does not match the norm's channels; a
-- norm before a Conv (its zero padding would not see the shift b).
local glia   = require "glia"
local Module = require "glia.nn.module"
local lin    = require "glia.nn.linear"
local act    = require "glia.nn.activation"
local cont   = require "glia.nn.container"

local type, ipairs, pairs, tostring, tonumber = type, ipairs, pairs, tostring, tonumber
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local getmetatable, setmetatable, rawget, rawset = getmetatable, setmetatable, rawget, rawset
local format, concat = string.format, table.concat
local is_module, class_name, Parameter = Module.is_module, Module.class_name, Module.Parameter
local is_tensor = glia.is_tensor

local M = {}

local CONV = { Conv1d = true, Conv2d = true }
local TRANSPARENT = { Flatten = true, AdaptiveAvgPool2d = true }

-- Whether m is an instance of cls or of a class derived from it.
local function is_a(m, cls)
  local c = getmetatable(m)
  while c do
    if c == cls then return true end
    local up = getmetatable(c)
    c = up and up.__index
  end
  return false
end

-- A norm fold can fold: one that gives its eval-mode affine (BatchNorm1d
-- and the classes derived from it, RepBN, PRepBN).
local function is_norm(m)
  return type(m.fold_affine) == "function"
end

local function is_transparent(m)
  return is_a(m, act.Identity) or is_a(m, act.Dropout) or TRANSPARENT[class_name(m)]
         or m.fold_transparent == true
end

local function label(path, m)
  local extra = m:extra_repr()
  return format("'%s' (%s%s)", path == "" and "<model>" or path, class_name(m),
                extra ~= "" and "(" .. extra .. ")" or "")
end

local function shape_str(x)
  return "{" .. concat(x:shape(), ",") .. "}"
end

-- A deep copy of v: modules, plain tables and tensors (cloned, detached;
-- parameters stay parameters) are copied once each, so ties survive;
-- classes, functions and other values are shared.
local function copy(v, memo)
  if memo[v] ~= nil then return memo[v] end
  if is_tensor(v) then
    local c = v:detach():clone()
    memo[v] = c
    return c
  end
  if type(v) ~= "table" or (getmetatable(v) ~= nil and not is_module(v)) then return v end
  local c = setmetatable({}, getmetatable(v))
  memo[v] = c
  for k, x in pairs(v) do rawset(c, copy(k, memo), copy(x, memo)) end
  if is_module(v) then
    for _, k in ipairs(v._params) do
      local p = rawget(c, k)
      if is_tensor(p) then Parameter(p) end
    end
  end
  return c
end

-- layer's weight (detached) once its size along dim is the norm's channel
-- count; where says where the layer sits ("after", "before").
local function weight_for(npath, norm, lpath, layer, a, dim, where)
  local W = layer.weight:detach()
  if W:size(dim) ~= a:size(1) then
    error(format("glia.nn.fold: norm %s has %d channels but the layer %s %s it has weight %s",
                 label(npath, norm), a:size(1), label(lpath, layer), where, shape_str(W)), 0)
  end
  return W
end

-- Folds the affine (a, b) of the norm named npath into the layer at lpath
-- that reads the norm's output.
local function fold_before(npath, norm, lpath, layer, a, b)
  if not is_a(layer, lin.Linear) then
    error(format("glia.nn.fold: norm %s feeds %s: only a Linear can take a norm before it (a conv's "
                 .. "zero padding would not see the shift)", label(npath, norm), label(lpath, layer)), 0)
  end
  local W = weight_for(npath, norm, lpath, layer, a, 2, "after")
  local shift = W:matmul(b)
  layer.weight = Parameter(W * a:view(1, a:size(1)))
  layer.bias = Parameter(layer.bias and layer.bias:detach() + shift or shift)
end

-- Folds (a, b) into the layer whose output the norm reads.
local function fold_after(npath, norm, lpath, layer, a, b)
  if not (is_a(layer, lin.Linear) or CONV[class_name(layer)]) then
    error(format("glia.nn.fold: norm %s reads %s, which is not a Linear or Conv",
                 label(npath, norm), label(lpath, layer)), 0)
  end
  local W = weight_for(npath, norm, lpath, layer, a, 1, "before")
  local shape = { a:size(1) }
  for d = 2, W:dim() do shape[d] = 1 end
  layer.weight = Parameter(W * a:view(shape))
  layer.bias = Parameter(layer.bias and layer.bias:detach() * a + b or b:clone())
end

-- The module at a dotted path under root, its parent and its key there.
local function resolve(root, rpath, path)
  local parent, key, m = nil, nil, root
  for part in tostring(path):gmatch("[^.]+") do
    parent, key = m, tonumber(part) or part
    m = is_module(parent) and rawget(parent, key) or nil
    if not is_module(m) then
      error(format("glia.nn.fold: fold_pairs of %s names '%s', which is not a module",
                   label(rpath, root), tostring(path)), 0)
    end
  end
  return m, parent, key
end

local function join(prefix, name)
  return prefix == "" and tostring(name) or prefix .. "." .. tostring(name)
end

-- The folds a module declares through fold_pairs().
local function fold_declared(root, rpath)
  for _, e in ipairs(root:fold_pairs()) do
    local norm, parent, key = resolve(root, rpath, e.norm)
    local npath = join(rpath, e.norm)
    if not is_norm(norm) then
      error(format("glia.nn.fold: fold_pairs of %s names %s as a norm", label(rpath, root),
                   label(npath, norm)), 0)
    end
    local a, b = norm:fold_affine()
    if e.from then
      fold_after(npath, norm, join(rpath, e.from), resolve(root, rpath, e.from), a, b)
    else
      if type(e.into) ~= "table" or #e.into == 0 then
        error(format("glia.nn.fold: fold_pairs of %s: the entry for '%s' needs `into` (a list of "
                     .. "paths) or `from` (a path)", label(rpath, root), tostring(e.norm)), 0)
      end
      for _, p in ipairs(e.into) do
        fold_before(npath, norm, join(rpath, p), resolve(root, rpath, p), a, b)
      end
    end
    parent:add_module(key, act.Identity())
  end
end

-- The next non-transparent child of seq from i in direction step.
local function neighbour(seq, i, step)
  local j = i + step
  while seq[j] and is_transparent(seq[j]) do j = j + step end
  return seq[j], j
end

-- The folds a Sequential's order implies.
local function fold_sequence(seq, spath)
  for i = 1, #seq do
    local norm = seq[i]
    if is_norm(norm) then
      local npath = join(spath, i)
      local after, j = neighbour(seq, i, 1)
      local before, k = neighbour(seq, i, -1)
      if after and is_a(after, lin.Linear) then
        local a, b = norm:fold_affine()
        fold_before(npath, norm, join(spath, j), after, a, b)
        seq:add_module(i, act.Identity())
      elseif before and (is_a(before, lin.Linear) or CONV[class_name(before)]) then
        local a, b = norm:fold_affine()
        fold_after(npath, norm, join(spath, k), before, a, b)
        seq:add_module(i, act.Identity())
      end
    end
  end
end

function M.fold(model)
  if not is_module(model) then
    error("glia.nn.fold: expected a module, got " .. type(model), 2)
  end
  for _, e in ipairs(model:named_modules()) do
    if e[2].training then
      error(format("glia.nn.fold: %s is in training mode: folding uses the running statistics, "
                   .. "call model:eval() first", label(e[1], e[2])), 2)
    end
  end
  local copy_of = copy(model, {})
  local ok, err = pcall(function()
    for _, e in ipairs(copy_of:named_modules()) do
      if type(e[2].fold_pairs) == "function" then fold_declared(e[2], e[1]) end
    end
    for _, e in ipairs(copy_of:named_modules()) do
      if is_a(e[2], cont.Sequential) then fold_sequence(e[2], e[1]) end
    end
    for _, e in ipairs(copy_of:named_modules()) do
      if is_norm(e[2]) then
        error(format("glia.nn.fold: norm %s has no linear neighbour to fold into (a Linear after it "
                     .. "or a Linear/Conv before it in a Sequential, or an entry in its parent's "
                     .. "fold_pairs)", label(e[1], e[2])), 0)
      end
    end
  end)
  -- (errors raised with a position, as fold_affine's, lose it: the caller's is what matters)
  if not ok then error((tostring(err):gsub("^[^:\n]*:%d+: ", "")), 2) end
  return copy_of
end

return M

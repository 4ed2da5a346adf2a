-- glia -- what `require "glia"` returns: the C core (glia.core) plus the
-- helpers written in Lua: no_grad and gradcheck.
local core = require "glia.core"
-- Errors skip glia's own files to blame the user's line: the core learns
-- their directory from this file's source, however require spelled it.
if debug and debug.getinfo then core._stdlib_source(debug.getinfo(1, "S").source) end
core._stdlib_source = nil
local options = require "glia.options"

local glia = core
local pcall, select, type, ipairs = pcall, select, type, ipairs
local error = core.error -- blames the user's line, never the stdlib's
local abs, max = math.abs, math.max
local unpack = table.unpack or unpack

local function pack(...) return { n = select("#", ...), ... } end

-- Runs fn(...) with grad mode off; restores the old mode even on error.
function glia.no_grad(fn, ...)
  local old = core.set_grad_enabled(false)
  local res = pack(pcall(fn, ...))
  core.set_grad_enabled(old)
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

-- Multi-indices of a shape, in row-major order, as 1-based tables.
local function each_index(shape)
  local idx, n = {}, #shape
  for d = 1, n do
    if shape[d] == 0 then return function() return nil end end
    idx[d] = 1
  end
  idx[n] = 0
  if n == 0 then
    local done = false
    return function() if done then return nil end done = true return {} end
  end
  return function()
    for d = n, 1, -1 do
      if idx[d] < shape[d] then
        idx[d] = idx[d] + 1
        return idx
      end
      idx[d] = 1
    end
    return nil
  end
end

local function flatten(v, out)
  if type(v) ~= "table" then out[#out + 1] = v return out end
  for _, x in ipairs(v) do flatten(x, out) end
  return out
end

-- Checks the gradients autograd gives fn at `inputs` (a list of f32 tensors)
-- against central differences of sum(fn(...) * w) for a fixed random w.
-- opts: eps (1e-3), atol (1e-2), rtol (1e-2). Returns true, or false and a
-- message naming the input, the element and both values.
function glia.gradcheck(fn, inputs, opts)
  if type(inputs) ~= "table" then -- ipairs would index a tensor row by row
    error("glia.gradcheck: inputs must be a list of tensors, got " .. type(inputs), 2)
  end
  opts = options.check("glia.gradcheck", opts, { "eps", "atol", "rtol" })
  local eps, atol, rtol = opts.eps or 1e-3, opts.atol or 1e-2, opts.rtol or 1e-2
  for _, x in ipairs(inputs) do x:zero_grad() x:requires_grad() end
  local out = fn(unpack(inputs))
  local w = glia.randn(out:shape())
  local wv = flatten(w:totable(), {})
  out:mul(w):sum():backward()
  local function objective()
    local o = glia.no_grad(fn, unpack(inputs))
    local ov, s = flatten(o:totable(), {}), 0
    for i = 1, #ov do s = s + ov[i] * wv[i] end
    return s
  end
  for k, x in ipairs(inputs) do
    local g = x.grad
    for idx in each_index(x:shape()) do
      local key = { unpack(idx) }
      local analytic = g and (x:dim() == 0 and g:item() or g[key]) or 0
      local v0 = x:dim() == 0 and x:item() or x[key]
      glia.no_grad(function()
        if x:dim() == 0 then x:fill_(v0 + eps) else x[key] = v0 + eps end
      end)
      local fp = objective()
      glia.no_grad(function()
        if x:dim() == 0 then x:fill_(v0 - eps) else x[key] = v0 - eps end
      end)
      local fm = objective()
      glia.no_grad(function()
        if x:dim() == 0 then x:fill_(v0) else x[key] = v0 end
      end)
      local numeric = (fp - fm) / (2 * eps)
      if abs(numeric - analytic) > atol + rtol * max(abs(numeric), abs(analytic)) then
        return false, string.format("gradcheck: input %d at {%s}: numeric %.6g, autograd %.6g",
                                    k, table.concat(key, ","), numeric, analytic)
      end
    end
  end
  return true
end

-- x must be a tensor: its methods run before any op could check it.
local function check_tensor(where, x)
  if not core.is_tensor(x) then error(where .. ": expected a tensor, got " .. type(x), 3) end
end

-- Views along dim (default 1): split takes a chunk length or a table of
-- lengths; chunk takes a number of chunks (the last may be shorter).
function glia.split(x, size, dim)
  check_tensor("glia.split", x)
  dim = dim or 1
  local n, parts, start = x:size(dim), {}, 1
  if type(size) == "table" then
    local total = 0
    for _, len in ipairs(size) do total = total + len end
    if total ~= n then
      error(string.format("glia.split: lengths sum to %d, but dim %d has size %d", total, dim, n), 2)
    end
    for i, len in ipairs(size) do
      parts[i] = x:narrow(dim, start, len)
      start = start + len
    end
    return parts
  end
  if type(size) ~= "number" or size < 1 or size ~= math.floor(size) then
    error("glia.split: chunk length must be a positive integer, got " .. tostring(size), 2)
  end
  while start <= n do
    local len = math.min(size, n - start + 1)
    parts[#parts + 1] = x:narrow(dim, start, len)
    start = start + len
  end
  return parts
end

function glia.chunk(x, chunks, dim)
  check_tensor("glia.chunk", x)
  if type(chunks) ~= "number" or chunks < 1 or chunks ~= math.floor(chunks) then
    error("glia.chunk: number of chunks must be a positive integer, got " .. tostring(chunks), 2)
  end
  local n = x:size(dim or 1)
  return glia.split(x, math.max(1, math.ceil(n / chunks)), dim)
end

-- glia.attention(q, k, v [, opts]) with opts {causal, scale, mask, block_q,
-- block_k, splits}; the positional form of the core op works as well.
local attention = core.attention
local ATTENTION_OPTIONS = { "causal", "scale", "mask", "block_q", "block_k", "splits" }
function glia.attention(q, k, v, opts, ...)
  if type(opts) == "table" then
    options.check("glia.attention", opts, ATTENTION_OPTIONS)
    return attention(q, k, v, opts.causal, opts.scale, opts.mask, opts.block_q, opts.block_k,
                     opts.splits)
  end
  return attention(q, k, v, opts, ...)
end

-- glia.conv2d(x, w [, b] [, {stride, padding, dilation, groups}]) and
-- glia.conv1d the same: stride, padding, dilation each a number or a {h, w}
-- pair (conv1d: a number); padding may also be "valid" (none) or "same"
-- (stride 1, the output as large as the input), as in PyTorch. The core ops
-- take them positionally, as lists.
local function pair(v) return type(v) == "number" and { v } or v end
local CONV_OPTIONS = { "stride", "padding", "dilation", "groups" }

-- The padding that "same" or "valid" means for weight w, as a list.
local function named_padding(where, padding, w, stride, dilation)
  if padding == "valid" then return { 0 } end
  if padding ~= "same" then
    error(where .. ": padding must be a number, a list or \"same\" or \"valid\", got " ..
          tostring(padding), 3)
  end
  local s, d, p = pair(stride or 1), pair(dilation or 1), {}
  for i = 1, w:dim() - 2 do
    if (s[i] or s[1]) ~= 1 then error(where .. ": padding \"same\" needs stride 1", 3) end
    local span = (d[i] or d[1]) * (w:size(i + 2) - 1)
    if span % 2 ~= 0 then
      error(string.format("%s: padding \"same\" for kernel {%s} needs uneven padding, which " ..
                          "glia does not do", where, table.concat(w:shape(), ",")), 3)
    end
    p[i] = math.floor(span / 2)
  end
  return p
end

for _, name in ipairs { "conv1d", "conv2d" } do
  local op, where = core[name], "glia." .. name
  glia[name] = function(x, w, b, opts)
    if type(b) == "table" and opts == nil then b, opts = nil, b end
    opts = options.check(where, opts, CONV_OPTIONS, 2)
    local padding = opts.padding
    if type(padding) == "string" then
      padding = named_padding(where, padding, w, opts.stride, opts.dilation)
    end
    return op(x, w, b, pair(opts.stride), pair(padding), pair(opts.dilation), opts.groups)
  end
end

-- glia.max_pool2d / glia.avg_pool2d(x, kernel [, stride [, padding]]) and
-- glia.adaptive_avg_pool2d(x, out_size): sizes are numbers or {h, w} pairs.
for _, name in ipairs { "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d" } do
  local op = core[name]
  glia[name] = function(x, kernel, stride, padding)
    return op(x, pair(kernel), pair(stride), pair(padding))
  end
end

-- glia.linear_attention(q, k, v [, {eps}]): ReLU-kernel linear attention
-- (ops/linear_attention.c); eps (default 1e-6) is added to each row's
-- normalizer and must be > 0.
local linear_attention = core.linear_attention
local LINEAR_ATTENTION_OPTIONS = { "eps" }
function glia.linear_attention(q, k, v, opts)
  opts = options.check("glia.linear_attention", opts, LINEAR_ATTENTION_OPTIONS)
  return linear_attention(q, k, v, opts.eps)
end

-- glia.acm(x, w1, b1, w2, k [, {learners, activation, schedule}]) and
-- glia.acm_all(x, w1, b1, w2 [, {learners, activation, detach}]): Adaptive
-- Computation Modules (ops/acm.c). learners defaults to 4, activation to
-- "gelu" (exact), detach to true, schedule to "bucket" ("tier": learner by
-- learner, equal to rounding). glia.acm returns o_{k_t}(x_t) {T,d} and
-- the learner FLOPs it ran; glia.acm_all every prefix {N+1,T,d}.
local acm_op, acm_all_op = core.acm, core.acm_all
local ACM_OPTIONS, ACM_ALL_OPTIONS = { "learners", "activation", "schedule" },
                                     { "learners", "activation", "detach" }
-- The options' values, checked (none given: all nil). Decoding calls
-- glia.acm once a token and layer: no table is made here, and the checks
-- are plain comparisons.
local function acm_opts(where, opts, known)
  if opts == nil then return nil, nil, nil, nil end
  options.check(where, opts, known, 3)
  local n, act, detach, schedule = opts.learners, opts.activation, opts.detach, opts.schedule
  if n ~= nil and not (type(n) == "number" and n % 1 == 0 and n >= 1 and n < 2 ^ 31) then
    error(where .. ": option learners must be an integer >= 1, got " .. tostring(n), 3)
  end
  if act ~= nil and type(act) ~= "string" then
    error(where .. ": option activation must be a string, got " .. tostring(act), 3)
  end
  if schedule ~= nil and type(schedule) ~= "string" then
    error(where .. ": option schedule must be a string, got " .. tostring(schedule), 3)
  end
  if detach ~= nil and type(detach) ~= "boolean" then
    error(where .. ": option detach must be true or false, got " .. tostring(detach), 3)
  end
  return n, act, detach, schedule
end
function glia.acm(x, w1, b1, w2, k, opts)
  local n, act, _, schedule = acm_opts("glia.acm", opts, ACM_OPTIONS)
  return acm_op(x, w1, b1, w2, k, n, act, schedule)
end
function glia.acm_all(x, w1, b1, w2, opts)
  local n, act, detach = acm_opts("glia.acm_all", opts, ACM_ALL_OPTIONS)
  return acm_all_op(x, w1, b1, w2, n, act, detach)
end

-- glia.load(path [, {mmap}]): the options are checked here, the file read in C.
local load = core.load
function glia.load(path, opts)
  if opts ~= nil then options.check("glia.load", opts, { "mmap" }) end
  return load(path, opts)
end

-- A per-layer KV cache for decoding (stdlib/glia/kv_cache.lua).
function glia.kv_cache(...) return require("glia.kv_cache").new(...) end

-- Mixture of experts: glia.moe_route, glia.moe, glia.moe_bias_update with
-- options tables and auxiliary losses over the core ops (stdlib/glia/moe.lua).
do
  local moe = require("glia.moe")(glia, core.moe_route, core.moe_experts)
  glia.moe_route, glia.moe, glia.moe_bias_update = moe.moe_route, moe.moe, moe.moe_bias_update
end

glia._methods.split = glia.split
glia._methods.chunk = glia.chunk

return glia

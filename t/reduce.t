-- t/reduce.t -- reductions and softmax (ops/reduce.c) against plain-Lua
-- references computed from :totable(), on contiguous, transposed, permuted,
-- narrowed, stepped and expanded inputs; empty dims; ties and NaN; accuracy
-- on long sums; 1 vs 2 threads; gradient checks; error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local abs, sqrt, log, exp, huge, floor = math.abs, math.sqrt, math.log, math.exp, math.huge, math.floor
local NAN = 0 / 0
u.seed(20240611)

-- ============================================================ helpers

-- Calls f(idx) for every multi-index of shape in row-major order (1-based;
-- idx is reused between calls).
local function each(shape, f)
  local n = #shape
  for d = 1, n do if shape[d] == 0 then return end end
  local idx = {}
  for d = 1, n do idx[d] = 1 end
  while true do
    f(idx)
    local d = n
    while d >= 1 do
      idx[d] = idx[d] + 1
      if idx[d] <= shape[d] then break end
      idx[d] = 1
      d = d - 1
    end
    if d < 1 then return end
  end
end

-- A flat row-major list as a nested table of shape (a number for 0-d).
local function nest(flat, shape)
  if #shape == 0 then return flat[1] end
  local pos = 0
  local function build(d)
    local r = {}
    for i = 1, shape[d] do
      if d == #shape then pos = pos + 1 r[i] = flat[pos] else r[i] = build(d + 1) end
    end
    return r
  end
  return build(1)
end

local function shape_str(s) return "{" .. table.concat(s, ",") .. "}" end

-- The set of reduced dims (1-based) of dims as given to an op.
local function dim_set(nd, dims)
  local red = {}
  if dims == nil or (type(dims) == "table" and #dims == 0) then
    for d = 1, nd do red[d] = true end
  else
    if type(dims) == "number" then dims = { dims } end
    for _, d in ipairs(dims) do red[d < 0 and nd + d + 1 or d] = true end
  end
  return red
end

-- Reduces x over dims with fn(list of values in row-major order) -> value;
-- returns the nested result (a number for 0-d) and its shape.
local function ref_reduce(x, dims, keepdim, fn)
  local xs, shape = t.flat(x, {}), x:shape()
  local nd = #shape
  local red = dim_set(nd, dims)
  local oshape, kstride, s = {}, {}, 1
  for d = 1, nd do
    if not red[d] then oshape[#oshape + 1] = shape[d] elseif keepdim then oshape[#oshape + 1] = 1 end
  end
  for d = nd, 1, -1 do
    kstride[d] = red[d] and 0 or s
    if not red[d] then s = s * shape[d] end
  end
  local groups, pos = {}, 0
  for k = 1, s do groups[k] = {} end
  each(shape, function(idx)
    local o = 1
    for d = 1, nd do o = o + (idx[d] - 1) * kstride[d] end
    pos = pos + 1
    local g = groups[o]
    g[#g + 1] = xs[pos]
  end)
  local out = {}
  for k = 1, s do out[k] = fn(groups[k]) end
  return nest(out, oshape), oshape
end

local function r_sum(v) local s = 0 for i = 1, #v do s = s + v[i] end return s end
local function r_mean(v) return r_sum(v) / #v end
local function r_var(corr)
  return function(v)
    local m, s = r_mean(v), 0
    for i = 1, #v do s = s + (v[i] - m) ^ 2 end
    return s / math.max(0, #v - corr)
  end
end
local function r_std(corr) local f = r_var(corr) return function(v) return sqrt(f(v)) end end
local function r_max(v)
  local m, at = v[1], 1
  for i = 2, #v do if v[i] > m or (v[i] ~= v[i] and m == m) then m, at = v[i], i end end
  return m, at
end
local function r_min(v)
  local m, at = v[1], 1
  for i = 2, #v do if v[i] < m or (v[i] ~= v[i] and m == m) then m, at = v[i], i end end
  return m, at
end
local function r_lse(v)
  local m = r_max(v) or -huge
  if m == huge or m == -huge then return m end
  local s = 0
  for i = 1, #v do s = s + exp(v[i] - m) end
  return m + log(s)
end
local function r_norm(p)
  return function(v)
    local s = 0
    for i = 1, #v do
      if p == huge then s = math.max(s, abs(v[i])) else s = s + abs(v[i]) ^ p end
    end
    return p == huge and s or s ^ (1 / p)
  end
end

-- Softmax along dim (1-based) of x, as a nested table.
local function ref_softmax(x, dim, is_log)
  local xs, shape = t.flat(x, {}), x:shape()
  local lse = ref_reduce(x, dim, true, r_lse)
  local ls = t.flat(lse, {})
  local kstride, s = {}, 1
  for d = #shape, 1, -1 do
    kstride[d] = d == dim and 0 or s
    if d ~= dim then s = s * shape[d] end
  end
  local out, pos = {}, 0
  each(shape, function(idx)
    local o = 1
    for d = 1, #shape do o = o + (idx[d] - 1) * kstride[d] end
    pos = pos + 1
    local v = xs[pos] - ls[o]
    out[pos] = is_log and v or exp(v)
  end)
  return nest(out, shape)
end

-- Compares a tensor with a reference; returns nil or a reason.
local function mismatch(got, want, wshape, tol)
  if not u.same_shape(got:shape(), wshape) then
    return "shape " .. shape_str(got:shape()) .. ", want " .. shape_str(wshape)
  end
  local d, why = t.maxdiff(got, want)
  if not d then return why end
  if d > tol then return string.format("max abs difference %g > %g", d, tol) end
end

-- Relative tolerance check: |got - want| <= tol * max(1, |want|) elementwise.
local function rel_ok(got, want, tol)
  local a, b = t.flat(got, {}), t.flat(want, {})
  if #a ~= #b then return false end
  for i = 1, #a do
    local x, y = a[i], b[i]
    if not (x == y or (x ~= x and y ~= y) or abs(x - y) <= tol * math.max(1, abs(y))) then
      return false, string.format("element %d: %.9g vs %.9g", i, x, y)
    end
  end
  return true
end

-- ======================================== inputs of one shape, many layouts

local function inputs_345()
  return {
    { "a contiguous", glia.randn(3, 4, 5) },
    { "a transposed", glia.randn(5, 4, 3):transpose(1, 3) },
    { "a permuted", glia.randn(4, 5, 3):permute(3, 1, 2) },
    { "a narrowed", glia.randn(3, 6, 5):narrow(2, 2, 4) },
    { "a stepped", glia.randn(3, 4, 10)[{ {}, {}, { 1, 10, 2 } }] },
    { "an expanded", glia.randn(3, 1, 5):expand(3, 4, 5) },
  }
end
local INPUTS = inputs_345()
local DIMS = { false, 1, 2, -1, { 1, 3 }, { 2, 3 }, { -3, -2 }, { 1, 2, 3 }, {} }

local function dims_str(d)
  if d == false then return "nil" end
  if type(d) == "table" then return "{" .. table.concat(d, ",") .. "}" end
  return tostring(d)
end

-- ================================= value reductions against the reference

local REDUCTIONS = {
  { "sum", function(x, d, k) return x:sum(d, k) end, r_sum, 1e-4 },
  { "mean", function(x, d, k) return x:mean(d, k) end, r_mean, 1e-5 },
  { "var", function(x, d, k) return x:var(d, k) end, r_var(1), 1e-4 },
  { "var with correction 0", function(x, d, k) return x:var(d, k, 0) end, r_var(0), 1e-4 },
  { "std", function(x, d, k) return x:std(d, k) end, r_std(1), 1e-4 },
  { "logsumexp", function(x, d, k) return x:logsumexp(d, k) end, r_lse, 1e-4 },
  { "norm (p = 2)", function(x, d, k) return x:norm(2, d, k) end, r_norm(2), 1e-4 },
  { "norm (p = 1)", function(x, d, k) return x:norm(1, d, k) end, r_norm(1), 1e-4 },
  { "norm (p = 3)", function(x, d, k) return x:norm(3, d, k) end, r_norm(3), 1e-4 },
  { "norm (p = inf)", function(x, d, k) return x:norm(huge, d, k) end, r_norm(huge), 0 },
}

for _, op in ipairs(REDUCTIONS) do
  local name, call, fn, tol = op[1], op[2], op[3], op[4]
  for _, inp in ipairs(INPUTS) do
    local what, x = inp[1], inp[2]
    local bad
    for _, d in ipairs(DIMS) do
      for _, k in ipairs({ false, true }) do
        local dd = d
        if d == false then dd = nil end
        local want, wshape = ref_reduce(x, dd, k, fn)
        local why = mismatch(call(x, dd, k), want, wshape, tol)
        if why and not bad then
          bad = string.format("dims %s keepdim %s: %s", dims_str(d), tostring(k), why)
        end
      end
    end
    if not t.ok(not bad, name .. " matches the Lua reference on " .. what ..
                " {3,4,5} input for every dims set, with and without keepdim") then
      t.diag(bad)
    end
  end
end

-- ======================================================= max, min, arg*

for _, inp in ipairs(INPUTS) do
  local what, x = inp[1], inp[2]
  local bad
  local function note(s) bad = bad or s end
  for _, pair in ipairs({ { "max", r_max }, { "min", r_min } }) do
    local name, fn = pair[1], pair[2]
    for _, d in ipairs({ 1, 2, 3, -1 }) do
      for _, k in ipairs({ false, true }) do
        local vals, wshape = ref_reduce(x, d, k, function(v) return (fn(v)) end)
        local idxs = ref_reduce(x, d, k, function(v) local _, i = fn(v) return i end)
        local v, i = x[name](x, d, k)
        local arg = x["arg" .. name](x, d, k)
        local why = mismatch(v, vals, wshape, 0) or mismatch(i, idxs, wshape, 0) or
                    mismatch(arg, idxs, wshape, 0)
        if why then note(string.format("%s dim %d keepdim %s: %s", name, d, tostring(k), why)) end
        if i:dtype() ~= "i64" or arg:dtype() ~= "i64" then note(name .. ": indices are not i64") end
      end
    end
    local whole = ref_reduce(x, nil, false, fn)
    local _, flat_at = fn(t.flat(x, {}))
    local mv, am = x[name](x), x["arg" .. name](x)
    if mv:dim() ~= 0 or mv:item() ~= whole then note(name .. " over all elements differs") end
    if am:dim() ~= 0 or am:item() ~= flat_at then note("arg" .. name .. " over all elements differs") end
  end
  if not t.ok(not bad, "max, min, argmax and argmin (values and 1-based indices) match the " ..
              "reference on " .. what .. " input, per dim and over all elements") then
    t.diag(bad)
  end
end

do
  local x = glia.tensor { { 1, 3, 3 }, { 2, 2, 1 } }
  local v, i = x:max(2)
  t.near(v, { 3, 2 }, 0, "max along dim 2 gives the row maxima")
  t.near(i, { 2, 1 }, 0, "max along dim 2 gives the first index of a tie, 1-based")
  t.near(x:argmin(2), { 1, 3 }, 0, "argmin along dim 2 gives the first minimum, 1-based")
  t.is(x:argmax():item(), 2, "argmax without a dim gives the first row-major position, 1-based")
  local w = glia.tensor { { 1, 3, 3 }, { 2, 2, 1 } }
  w:requires_grad()
  local mv = w:max(2)
  mv:sum():backward()
  t.near(w.grad, { { 0, 1, 0 }, { 1, 0, 0 } }, 0, "max's gradient goes to the first index of a tie only")
  local ties = glia.tensor { 1, 5, 5 }
  ties:requires_grad()
  ties:max():backward()
  t.near(ties.grad, { 0, 1, 0 }, 0, "max over all elements sends the gradient to the first maximum")
  local n = glia.tensor { 1, NAN, 3 }
  t.ok(n:max():item() ~= n:max():item(), "max propagates NaN")
  t.is(n:argmax():item(), 2, "argmax points at the NaN")
  t.ok(n:min():item() ~= n:min():item(), "min propagates NaN")
  local m = glia.randn(4, 6)
  local mvals, midx = m:max(2)
  local ok, g = pcall(function() return m:gather(2, midx:unsqueeze(2)) end)
  if t.ok(ok, "max's 1-based indices are accepted by gather") then
    t.near(g:squeeze(2), mvals, 0, "gather at max's indices gives max's values")
  else
    t.diag(g)
    t.ok(false, "gather at max's indices gives max's values")
  end
end

-- ============================================================= softmax

for _, inp in ipairs(INPUTS) do
  local what, x = inp[1], inp[2]
  local bad
  for _, d in ipairs({ 1, 2, 3, -1 }) do
    local nd = d < 0 and 3 + d + 1 or d
    for _, is_log in ipairs({ false, true }) do
      local got = is_log and x:log_softmax(d) or x:softmax(d)
      local why = mismatch(got, ref_softmax(x, nd, is_log), x:shape(), 1e-5)
      if why and not bad then
        bad = string.format("%s dim %d: %s", is_log and "log_softmax" or "softmax", d, why)
      end
    end
  end
  if not t.ok(not bad, "softmax and log_softmax match the reference along every dim of " ..
              what .. " input") then
    t.diag(bad)
  end
end

do
  local big = glia.tensor { { 1000, 1001, 1002 }, { -1000, -1001, -1002 } }
  local want = ref_softmax(glia.tensor { { 0, 1, 2 }, { 0, -1, -2 } }, 2, false)
  t.near(big:softmax(2), want, 1e-6, "softmax is stable on large logits (max subtracted)")
  t.near(big:log_softmax(2), ref_softmax(glia.tensor { { 0, 1, 2 }, { 0, -1, -2 } }, 2, true), 1e-5,
         "log_softmax is stable on large logits")
  local masked = glia.tensor { { 0, -huge, 1 } }:softmax(2)
  t.is(masked:totable()[1][2], 0, "softmax gives exactly 0 to a -inf logit")
  t.near(glia.randn(7, 33):softmax(2):sum(2), { 1, 1, 1, 1, 1, 1, 1 }, 1e-6, "softmax rows sum to 1")
  local wide = glia.randn(7, 300) * 3
  t.near(wide:softmax(1), ref_softmax(wide, 1, false), 1e-6,
         "softmax along dim 1 of {7,300} (more rows side by side than one block) matches the reference")
  t.near(wide:log_softmax(1), ref_softmax(wide, 1, true), 1e-5,
         "log_softmax along dim 1 of {7,300} matches the reference")
  t.near(glia.tensor { { 0, -huge, 1 } }:logsumexp(2), { r_lse { 0, -huge, 1 } }, 1e-6,
         "logsumexp ignores -inf entries")
  t.near(glia.tensor { { -huge, -huge } }:logsumexp(2), { -huge }, 0, "logsumexp of all -inf is -inf")
  t.near(glia.tensor { { huge, 1 } }:logsumexp(2), { huge }, 0, "logsumexp with +inf is +inf")
end

-- ============================= larger inputs: every layout and chunking

do
  local A = glia.randn(1000, 513)
  local cases = {
    { "sum over dim 1 of {1000,513} (column layout)", function() return A:sum(1) end, A, 1, r_sum },
    { "sum over dim 2 of {1000,513} (row layout)", function() return A:sum(2) end, A, 2, r_sum },
    { "sum of all of {1000,513} (chunked row)", function() return A:sum() end, A, nil, r_sum },
    { "sum over dim 1 of a transposed {513,1000} (strided rows)",
      function() return A:t():sum(1) end, A:t(), 1, r_sum },
    { "sum over dim 2 of a transposed {513,1000} (strided columns)",
      function() return A:t():sum(2) end, A:t(), 2, r_sum },
    { "mean over dim 1 of {1000,513}", function() return A:mean(1) end, A, 1, r_mean },
  }
  for _, c in ipairs(cases) do
    local want = ref_reduce(c[3], c[4], false, c[5])
    local ok, why = rel_ok(c[2](), want, 1e-5)
    if not t.ok(ok, c[1] .. " matches the reference to 1e-5 relative") then t.diag(why) end
  end

  local B = glia.randn(3000, 7) -- 3000 rows: three column chunks
  local C = glia.randn(3, 40000) -- 40000 > one row chunk
  local D = glia.randn(50, 300, 4):narrow(3, 1, 3) -- short strided runs, several per chunk
  local chunked = {
    { "column layout over 3000 rows", B, 1 },
    { "column layout over 203 rows of 1100 outputs", glia.randn(203, 1100), 1 },
    { "row layout over rows of 40000", C, 2 },
    { "row layout over 15000 runs of 3", D, nil },
    { "rows of 900 strided runs", D, { 2, 3 } },
  }
  for _, c in ipairs(chunked) do
    local x, d = c[2], c[3]
    local bad
    for _, op in ipairs(REDUCTIONS) do
      local want, wshape = ref_reduce(x, d, false, op[3])
      local got = op[2](x, d, false)
      local ok, why = rel_ok(got, want, 2e-5)
      if not u.same_shape(got:shape(), wshape) then ok, why = false, "shape" end
      if not ok and not bad then bad = op[1] .. ": " .. why end
    end
    if type(d) ~= "table" then
      local v, i = x:max(d or 1)
      local vals = ref_reduce(x, d or 1, false, function(l) return (r_max(l)) end)
      local idxs = ref_reduce(x, d or 1, false, function(l) local _, k = r_max(l) return k end)
      if t.maxdiff(v, vals) ~= 0 or t.maxdiff(i, idxs) ~= 0 then bad = bad or "max" end
    end
    if not t.ok(not bad, "every value reduction matches the reference in the " .. c[1]) then
      t.diag(bad)
    end
  end
end

do -- long sums stay accurate: a float accumulator would drift far off
  local n = 16777216
  local x = glia.full({ n }, 0.1)
  local f01 = glia.tensor { 0.1 }:totable()[1]
  t.is(x:sum():item(), n * f01, "the sum of 2^24 copies of 0.1f is exact")
  t.is(x:mean():item(), f01, "the mean of 2^24 copies of 0.1f is 0.1f")
  t.is(x:var():item(), 0, "the variance of 2^24 equal values is 0")
  local cols = glia.full({ 2097152, 4 }, 0.1):sum(1)
  t.near(cols, { 2097152 * f01, 2097152 * f01, 2097152 * f01, 2097152 * f01 }, 0,
         "column sums over 2^21 rows of 0.1f are exact")
  local y = glia.randn(100000) + 10000
  local ok, why = rel_ok(y:var(), ref_reduce(y, nil, false, r_var(1)), 1e-4)
  if not t.ok(ok, "var of values near 1e4 with unit spread matches the two-pass reference") then
    t.diag(why)
  end
end

-- ==================================================== 1 vs 2 threads

do
  local A = glia.randn(1000, 513)
  local L = glia.randn(3, 100000)
  local function run()
    local r = {
      A:sum(1), A:sum(2), A:sum(), A:t():sum(2), A:mean(1), A:var(2), A:std(1),
      A:logsumexp(2), A:logsumexp(1), A:norm(2, 1), A:norm(1), A:max(1), A:argmin(2),
      A:softmax(2), A:softmax(1), A:log_softmax(2), A:log_softmax(1), L:sum(2), L:max(2), L:argmax(),
    }
    local w = glia.randn(1000, 513)
    glia.manual_seed(7)
    local leaf = A:clone()
    leaf:requires_grad()
    leaf:softmax(2):mul(w):sum():backward()
    r[#r + 1] = leaf.grad
    leaf:zero_grad()
    leaf:log_softmax(1):mul(w):sum():backward()
    r[#r + 1] = leaf.grad
    return r
  end
  local r = u.by_threads(function()
    glia.manual_seed(3)
    return run()
  end)
  local one, two = r[1], r[2]
  local same = true
  for k = 1, #one do
    if t.maxdiff(one[k], two[k]) ~= 0 then
      same = false
      t.diag("result " .. k .. " differs")
    end
  end
  t.ok(same, "reductions, softmax and their backward give bit-identical results on 1 and 2 threads")
end

-- ======================================================== empty dims

do
  local e = glia.zeros(2, 0)
  t.ok(u.same_shape(e:sum(2):shape(), { 2 }) and t.maxdiff(e:sum(2), { 0, 0 }) == 0,
       "the sum over an empty dim is 0")
  t.ok(u.same_shape(e:sum(1):shape(), { 0 }), "the sum over a non-empty dim of an empty tensor is empty")
  t.is(e:sum():item(), 0, "the sum of an empty tensor is 0")
  local m = e:mean(2):totable()
  t.ok(m[1] ~= m[1] and m[2] ~= m[2], "the mean over an empty dim is NaN")
  t.ok(e:var(2):totable()[1] ~= e:var(2):totable()[1], "the variance over an empty dim is NaN")
  t.is(e:logsumexp(2):totable()[1], -huge, "logsumexp over an empty dim is -inf")
  t.is(e:norm(2, 2):totable()[1], 0, "the norm over an empty dim is 0")
  t.error_like(function() e:max(2) end, "glia%.max: cannot reduce over dim 2 of size 0 in {2,0}",
               "max over an empty dim is an error naming the op, dim and shape")
  t.error_like(function() glia.zeros(0):argmax() end, "glia%.argmax: cannot reduce an empty tensor {0}",
               "argmax of an empty tensor is an error naming the op and shape")
  local v, i = glia.zeros(0, 3):max(2)
  t.ok(u.same_shape(v:shape(), { 0 }) and u.same_shape(i:shape(), { 0 }),
       "max along a non-empty dim of an empty tensor gives empty values and indices")
  t.ok(u.same_shape(glia.zeros(0, 3):softmax(2):shape(), { 0, 3 }), "softmax of an empty tensor is empty")
  local g = glia.zeros(2, 0)
  g:requires_grad()
  g:sum():backward()
  t.ok(u.same_shape(g.grad:shape(), { 2, 0 }), "sum of an empty tensor backpropagates an empty gradient")
end

-- ========================================================= autograd

do
  local x = glia.randn(2, 3)
  x:requires_grad()
  local s = x:sum()
  t.is(s:dim(), 0, "sum over every dim without keepdim is 0-d")
  s:backward()
  t.near(x.grad, { { 1, 1, 1 }, { 1, 1, 1 } }, 0, "the gradient of sum is ones")
  x:zero_grad()
  x:mean():backward()
  t.near(x.grad, { { 1 / 6, 1 / 6, 1 / 6 }, { 1 / 6, 1 / 6, 1 / 6 } }, 1e-7, "the gradient of mean is 1/N")
  t.ok(u.same_shape(x:sum(1, true):shape(), { 1, 3 }), "keepdim keeps a reduced dim as size 1")
  t.ok(u.same_shape(x:sum({ 1, 2 }, true):shape(), { 1, 1 }), "keepdim over every dim keeps them all")
  t.is(glia.tensor(5):sum():item(), 5, "the sum of a 0-d tensor is itself")
end

local function spread(...) -- distinct values, well apart: no ties within eps
  local x = glia.randn(...)
  local n = x:numel()
  local perm = {}
  for i = 1, n do perm[i] = i end
  for i = n, 2, -1 do
    local j = (i * 7919 + 13) % i + 1
    perm[i], perm[j] = perm[j], perm[i]
  end
  local flat = {}
  for i = 1, n do flat[i] = (perm[i] - n / 2) * 0.37 end
  return glia.tensor(flat):reshape(x:shape())
end

t.diag("gradcheck: f32 central differences, eps 1e-3, atol 1e-2, rtol 1e-2")
u.gradcheck(function(a) return a:sum({ 1, 3 }) end, { glia.randn(2, 3, 4) },
            "sum over dims {1,3} passes gradcheck")
u.gradcheck(function(a) return a:t():sum(2, true) end, { glia.randn(3, 4) },
            "sum over dim 2 with keepdim of a transposed input passes gradcheck")
u.gradcheck(function(a) return a:mean(-1) end, { glia.randn(3, 4) }, "mean over dim -1 passes gradcheck")
u.gradcheck(function(a) return a:var(2) end, { glia.randn(3, 5) }, "var over dim 2 passes gradcheck")
u.gradcheck(function(a) return a:var(nil, false, 0) end, { glia.randn(3, 4) },
            "var over all dims with correction 0 passes gradcheck")
u.gradcheck(function(a) return a:std(1, true) end, { glia.randn(4, 3) },
            "std over dim 1 with keepdim passes gradcheck")
u.gradcheck(function(a) return a:logsumexp(2) end, { glia.randn(3, 5) },
            "logsumexp over dim 2 passes gradcheck")
u.gradcheck(function(a) return a:t():logsumexp({ 1, 2 }) end, { glia.randn(3, 4) },
            "logsumexp over dims {1,2} of a transposed input passes gradcheck")
u.gradcheck(function(a) return a:norm(2, 2) end, { glia.randn(3, 5) }, "norm p = 2 over dim 2 passes gradcheck")
u.gradcheck(function(a) return a:norm(1) end, { spread(3, 4) }, "norm p = 1 passes gradcheck")
u.gradcheck(function(a) return a:norm(3, 1) end, { spread(4, 3) }, "norm p = 3 over dim 1 passes gradcheck")
u.gradcheck(function(a) return a:norm(huge, 2) end, { spread(3, 5) },
            "norm p = inf over dim 2 passes gradcheck")
u.gradcheck(function(a) return (a:max(2)) end, { spread(3, 5) }, "max along dim 2 passes gradcheck")
u.gradcheck(function(a) return (a:t():min(1, true)) end, { spread(4, 3) },
            "min along dim 1 with keepdim of a transposed input passes gradcheck")
u.gradcheck(function(a) return a:max() end, { spread(3, 4) }, "max over all elements passes gradcheck")
u.gradcheck(function(a) return a:softmax(2) end, { glia.randn(3, 5) }, "softmax along dim 2 passes gradcheck")
u.gradcheck(function(a) return a:t():softmax(1) end, { glia.randn(3, 5) },
            "softmax along dim 1 of a transposed input passes gradcheck")
u.gradcheck(function(a) return a:softmax(1) end, { glia.randn(4, 3) },
            "softmax along dim 1 of a contiguous input (rows side by side) passes gradcheck")
u.gradcheck(function(a) return a:log_softmax(1) end, { glia.randn(4, 3) },
            "log_softmax along dim 1 of a contiguous input passes gradcheck")
u.gradcheck(function(a) return a:log_softmax(-1) end, { glia.randn(3, 5) },
            "log_softmax along dim -1 passes gradcheck")
u.gradcheck(function(a) return a:narrow(2, 2, 3):log_softmax(2) end, { glia.randn(3, 5) },
            "log_softmax along dim 2 of a narrowed input passes gradcheck")

-- ================================================ allocation failure

do
  local big = glia.randn(4, 40000) -- chunk results need scratch memory
  local cases = {
    { "sum with chunk scratch", function() return big:sum() end },
    { "var over a column chunked dim", function() return glia.randn(3000, 5):var(1) end },
    { "max with indices over long rows", function() return big:max(2) end },
    { "argmax over all of a transposed tensor", function() return big:t():argmax() end },
    { "logsumexp and its backward", function()
        local x = glia.randn(3, 5)
        x:requires_grad()
        x:logsumexp(2):sum():backward()
      end },
    { "norm p = inf and its backward", function()
        local x = glia.randn(3, 5)
        x:requires_grad()
        x:norm(huge, 2):sum():backward()
      end },
    { "std and its backward", function()
        local x = glia.randn(3, 5)
        x:requires_grad()
        x:std(1):sum():backward()
      end },
    { "max along a dim and its backward", function()
        local x = glia.randn(3, 5)
        x:requires_grad()
        local v = x:max(2)
        v:sum():backward()
      end },
    { "softmax and its backward", function()
        local x = glia.randn(3, 5)
        x:requires_grad()
        x:softmax(2):sum():backward()
      end },
  }
  for _, c in ipairs(cases) do
    u.oom_ok(c[2], c[1] .. " fails cleanly with out of memory at every allocation")
  end
end

-- =========================================================== errors

do
  local x = glia.randn(2, 3)
  t.error_like(function() glia.tensor({ 1, 2 }, "i64"):sum() end,
               "glia%.sum: x must be f32, got i64 {2}",
               "sum of an i64 tensor names op, dtype and shape")
  t.error_like(function() glia.tensor({ 1, 2 }, "i64"):softmax(1) end,
               "glia%.softmax: x must be f32, got i64 {2}",
               "softmax of an i64 tensor is a dtype error")
  t.error_like(function() x:sum(3) end, "glia%.sum: dim 3 out of range for a 2%-D tensor",
               "a dim past the end is an error naming the op and the rank")
  t.error_like(function() x:max(-3) end, "glia%.max: dim %-3 out of range",
               "a negative dim past the start is an error")
  t.error_like(function() x:sum({ 1, 1 }) end, "glia%.sum: dim 1 given twice", "a repeated dim is an error")
  t.error_like(function() x:var(1, false, -1) end, "glia%.var: correction must be a number >= 0",
               "a negative correction is an error")
  t.error_like(function() x:norm(0) end, "glia%.norm: p must be > 0", "norm with p = 0 is an error")
  t.error_like(function() x:softmax() end, "glia%.softmax: missing argument", "softmax needs a dim")
  t.error_like(function() x:log_softmax(3) end, "glia%.log_softmax: dim 3 out of range",
               "log_softmax with a dim past the end is an error")
end

t.done()

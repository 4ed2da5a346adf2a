-- t/block.t -- glia.decoder_block (ops/block.c), nn.TransformerBlock's
-- fused decode path against its module path, the sub-layers alone
-- (part "attn", glia.decoder_mlp), glia.kv_cache's reserve and advance,
-- and models/gpt.lua built from TransformerBlock.
--
-- The fused path (one C call per block and step) must give the module path's
-- result: every step of a cached decode, the cache contents, and the full
-- causal forward without a cache, for B = 1, 2, kv_heads 4, 2, 1 (MHA, GQA,
-- MQA), no biases, mlp_ratio 2, eps 1e-3, a prefill of several positions and
-- a cache of capacity 2 that reserve must grow. Then strided inputs, direct
-- calls with the block's parameter list, the errors (each leaves the cache
-- buffers as they were), reserve/advance, and greedy GPT generation past the
-- context with and without the fused path.
--
-- Tolerance: 1e-5 absolute for f32 results, as in t/mha.t (the fused path
-- composes the same ops; the full forward sums attention in another order).
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local u = require "t.util"
local glia = require "glia"
local nn = require "glia.nn"
local KV = require "glia.kv_cache"
local GPT = require "models.gpt"

local unpack = table.unpack or unpack
local format, sqrt = string.format, math.sqrt

local SEED = 2718
u.seed(SEED)

local TOL = 1e-5
local C, H, T = 32, 4, 7

-- glia.decoder_block behind a counter, so that a test can tell which path
-- a forward took (TransformerBlock looks the function up on each call).
local decoder_block = glia.decoder_block
local fused_calls = 0
glia.decoder_block = function(...)
  fused_calls = fused_calls + 1
  return decoder_block(...)
end

-- Gives every parameter of m random values (layer norms around 1, so that
-- swapping ln1 and ln2, or weights and biases, changes the result).
local function randomize(m)
  glia.no_grad(function()
    for _, e in ipairs(m:named_parameters()) do
      local name, p = e[1], e[2]
      local r = glia.randn(unpack(p:shape()))
      if name:match("^ln%d%.weight$") then r = r * 0.2 + 1
      elseif p:dim() == 1 then r = r * 0.2
      else r = r / sqrt(p:size(2)) end
      p:copy_(r)
    end
  end)
  return m
end

local function block(opts)
  local blk = randomize(nn.TransformerBlock(C, H, opts))
  blk:eval()
  return blk
end

-- Runs blk over x {B,T,C} through a new cache of capacity cap: the first
-- prefill positions in one call, then one position per call. Returns the
-- outputs concatenated along T, the cache and the number of fused calls.
local function decode(blk, x, prefill, cap)
  local cache = blk:new_cache(x:size(1), cap)
  local before = fused_calls
  local steps = { blk(x:narrow(2, 1, prefill), cache) }
  for i = prefill + 1, x:size(2) do steps[#steps + 1] = blk(x:narrow(2, i, 1), cache) end
  return glia.cat(steps, 2), cache, fused_calls - before
end

-- The first len() positions of a cache's keys and values.
local function cached(cache)
  return cache.k:narrow(3, 1, cache:len()), cache.v:narrow(3, 1, cache:len())
end

-- The largest difference between the cached keys and values of two caches
-- (math.huge when their lengths differ).
local function cache_diff(a, b)
  if a:len() ~= b:len() then return math.huge end
  local ka, va = cached(a)
  local kb, vb = cached(b)
  return math.max(t.maxdiff(ka, kb), t.maxdiff(va, vb))
end

-- ============================================ fused path == module path

local CASES = {
  { B = 1, kv = 4, prefill = 1, cap = T },
  { B = 2, kv = 4, prefill = 3, cap = 2 },
  { B = 2, kv = 2, prefill = 1, cap = T },
  { B = 1, kv = 1, prefill = 4, cap = 2 },
  { B = 2, kv = 1, prefill = 2, cap = 2, bias = false, mlp_ratio = 2, eps = 1e-3, scale = 0.1 },
  { B = 2, kv = 2, prefill = 3, cap = 16, bias = false, eps = 1e-3, scale = 0.1 },
  -- one row per step (ops/block.c's row_step), an MLP width of 96: not whole blocks of 64
  { B = 1, kv = 2, prefill = 1, cap = 2, bias = false, mlp_ratio = 3 },
}

glia.no_grad(function()
  for _, cs in ipairs(CASES) do
    local tag = format("B=%d kv=%d prefill=%d cap=%d%s%s%s", cs.B, cs.kv, cs.prefill, cs.cap,
                       cs.bias == false and " bias=false" or "",
                       cs.mlp_ratio and " mlp_ratio=" .. cs.mlp_ratio or "",
                       cs.eps and " eps=" .. cs.eps or "")
    local blk = block { kv_heads = cs.kv, bias = cs.bias, mlp_ratio = cs.mlp_ratio, eps = cs.eps }
    local x = glia.randn(cs.B, T, C) * (cs.scale or 1)
    local fused, fcache, calls = decode(blk, x, cs.prefill, cs.cap)
    blk.fused = false
    local plain, pcache, pcalls = decode(blk, x, cs.prefill, cs.cap)
    blk.fused = nil
    local full = blk(x)
    t.ok(calls == 1 + T - cs.prefill and pcalls == 0,
         tag .. ": a cached forward makes one decoder_block call, none with fused = false")
    t.near(fused, plain, TOL, tag .. ": every fused decode step equals the module path's")
    t.near(fused, full, TOL, tag .. ": fused decoding equals the full causal forward")
    local d = cache_diff(fcache, pcache)
    if not t.ok(fcache:len() == T and d <= TOL,
                tag .. ": the fused path writes the module path's keys and values") then
      t.diag(format("lengths %d and %d, max difference %g", fcache:len(), pcache:len(), d))
    end
    if cs.cap < T then
      t.ok(fcache:capacity() >= T and pcache:capacity() >= T,
           tag .. ": reserve grew the cache from capacity " .. cs.cap .. " to hold all positions")
    end
    if cs.bias == false then
      t.ok(blk.attn.qkv.bias == nil and blk.attn.proj.bias == nil and blk.fc.bias == nil
           and blk.fc2.bias == nil,
           tag .. ": the linear layers have no bias (the fused path passes zeros)")
    end
  end
end)

do -- another MLP (an nn.MoE): the fused call runs the attention half alone
  for _, cs in ipairs { { B = 1, prefill = 1, bias = true }, { B = 2, prefill = 3, bias = false } } do
    local tag = format("mlp = nn.MoE, B=%d prefill=%d bias=%s", cs.B, cs.prefill, tostring(cs.bias))
    local blk = block { kv_heads = 2, bias = cs.bias, mlp = nn.MoE(C, 16, 4, { k = 2 }) }
    local x = glia.randn(cs.B, T, C)
    glia.no_grad(function()
      local fused, fcache, calls = decode(blk, x, cs.prefill, T)
      blk.fused = false
      local plain, pcache = decode(blk, x, cs.prefill, T)
      blk.fused = nil
      t.ok(calls == 1 + T - cs.prefill, tag .. ": one decoder_block call per cached forward")
      t.near(fused, plain, TOL, tag .. ": fused decoding equals the module path's")
      t.near(fused, blk(x), TOL, tag .. ": and the full causal forward")
      t.ok(cache_diff(fcache, pcache) <= TOL, tag .. ": with the module path's keys and values")
    end)
  end
  local blk = block {}
  local p = blk:_fused_params()
  local x = glia.randn(1, 3, C)
  local half = glia.no_grad(function()
    return glia.decoder_block(x, { p[1], p[2], p[3], p[4], p[5], p[6] }, blk:new_cache(1, 4).k,
                              blk:new_cache(1, 4).v, 0, H, 1e-5, "attn")
  end)
  local want = glia.no_grad(function() return x + blk.attn(blk.ln1(x)) end)
  t.near(half, want, TOL, "decoder_block's part \"attn\" takes the first 6 parameters alone: x + attn(ln1(x))")
  t.error_like(function() glia.no_grad(glia.decoder_block, x, { p[1], p[2], p[3], p[4], p[5], p[6] },
                                       blk:new_cache(1, 4).k, blk:new_cache(1, 4).v, 0, H) end,
               "expected 12 parameters %(ln1, qkv, proj, ln2, fc, fc2: weight and bias each%), got 6",
               "decoder_block's whole block refuses the 6 parameters of the attention sub-layer")
end

do -- when the block keeps the module path although a cache is given
  local blk = block { kv_heads = 2, dropout = 0.1 }
  blk:train()
  local before = fused_calls
  glia.no_grad(function() blk(glia.randn(1, 2, C), blk:new_cache(1, 4)) end)
  t.is(fused_calls - before, 0, "training with dropout keeps the module path with a cache")
  local blk2 = block { kv_heads = 2 }
  blk2.ln2.eps = 1e-3
  local x = glia.randn(1, 3, C)
  before = fused_calls
  local y = glia.no_grad(function() return blk2(x, blk2:new_cache(1, 4)) end)
  t.is(fused_calls - before, 0, "layer norms with different eps keep the module path")
  t.near(y, glia.no_grad(function() return blk2(x) end), TOL,
         "... which then applies each layer norm's own eps")
end

-- ========================================================= strided input

glia.no_grad(function()
  local B = 2
  local blk = block { kv_heads = 2 }
  local xt = glia.randn(B, C, 3):transpose(2, 3)            -- {B,3,C}, C strided
  local wide = glia.randn(B, 2, 2 * C)
  local steps = { wide:narrow(2, 1, 1):narrow(3, C + 1, C), -- {B,1,C} views
                  wide:narrow(2, 2, 1):narrow(3, 1, C) }
  local views = not xt:is_contiguous() and not steps[1]:is_contiguous()
                and not steps[2]:is_contiguous()
  local c1, c2 = blk:new_cache(B, 2), blk:new_cache(B, 2)
  local a = { blk(xt, c1) }
  local b = { blk(xt:contiguous(), c2) }
  for i, s in ipairs(steps) do
    a[i + 1] = blk(s, c1)
    b[i + 1] = blk(s:contiguous(), c2)
  end
  local d = math.max(t.maxdiff(glia.cat(a, 2), glia.cat(b, 2)), cache_diff(c1, c2))
  if not t.ok(views and d <= TOL,
              "strided views of x (transpose, narrow) give the contiguous copies' outputs "
              .. "and caches") then
    t.diag(format("inputs strided: %s, max difference %g", tostring(views), d))
  end
end)

-- ============================================== calling decoder_block directly

glia.no_grad(function()
  local B, D = 2, C / H
  local x, x2 = glia.randn(B, 3, C), glia.randn(B, 1, C)
  for _, bias in ipairs { true, false } do
    local blk = block { kv_heads = 2, bias = bias }
    local function b(m, n) return m.bias or glia.zeros(n) end
    local a, q = blk.attn, blk.attn.qkv
    local p = { blk.ln1.weight, blk.ln1.bias, q.weight, b(q, q.weight:size(1)),
                a.proj.weight, b(a.proj, C), blk.ln2.weight, blk.ln2.bias,
                blk.fc.weight, b(blk.fc, 4 * C), blk.fc2.weight, b(blk.fc2, C) }
    local cache = blk:new_cache(B, 8)
    local want = glia.cat({ blk(x, cache), blk(x2, cache) }, 2)
    local kc, vc = glia.zeros(B, 2, 8, D), glia.zeros(B, 2, 8, D)
    local got = glia.cat({ decoder_block(x, p, kc, vc, 0, H),        -- eps: the default 1e-5
                           decoder_block(x2, p, kc, vc, 3, H, 1e-5) }, 2)
    local ck, cv = cached(cache)
    local d = math.max(t.maxdiff(got, want), t.maxdiff(kc:narrow(3, 1, 4), ck),
                       t.maxdiff(vc:narrow(3, 1, 4), cv))
    local desc = format("bias=%s: glia.decoder_block with the module's parameters equals "
                        .. "blk(x, cache), outputs and caches", tostring(bias))
    if not t.ok(cache:len() == 4 and d <= TOL, desc) then
      t.diag(format("max difference %g", d))
    end
    local fp = blk:_fused_params()
    local same = #fp == 12
    for i = 1, 12 do same = same and t.maxdiff(fp[i], p[i]) == 0 end
    t.ok(same, format("bias=%s: _fused_params lists the 12 parameters in order, zeros for "
                      .. "absent biases", tostring(bias)))
  end
end)

-- ================================== one sub-layer: "attn" and decoder_mlp

-- What glia.skip runs for a block whose MLP or attention a plan drops:
-- the kept sub-layer alone, fused, against the module path (x +
-- attn_update(x, cache), x + mlp_update(x)): a prefill of 3 and a step of
-- 1 (the general and the one-row kernels), B = 2 and 1.
glia.no_grad(function()
  for _, B in ipairs { 2, 1 } do
    local blk = block { kv_heads = 2 }
    local p = blk:_fused_params()
    local x, x2 = glia.randn(B, 3, C), glia.randn(B, 1, C)
    local cache = blk:new_cache(B, 8)
    local want = glia.cat({ x + blk:attn_update(x, cache), x2 + blk:attn_update(x2, cache) }, 2)
    local kc, vc = glia.zeros(B, 2, 8, C / H), glia.zeros(B, 2, 8, C / H)
    local got = glia.cat({ decoder_block(x, p, kc, vc, 0, H, 1e-5, "attn"),
                           decoder_block(x2, p, kc, vc, 3, H, 1e-5, "attn") }, 2)
    local ck = cached(cache)
    local d = math.max(t.maxdiff(got, want), t.maxdiff(kc:narrow(3, 1, 4), ck))
    if not t.ok(d <= TOL, format("B=%d: decoder_block(..., \"attn\") is the attention " ..
                                  "sub-layer alone, output and cache", B)) then
      t.diag(format("max difference %g", d))
    end
    local full = decoder_block(x2, p, kc:clone(), vc:clone(), 3, H, 1e-5, "block")
    local blockwise = decoder_block(x2, p, kc:clone(), vc:clone(), 3, H)
    t.ok(u.identical(full, blockwise), "part \"block\" is the default")
    d = math.max(t.maxdiff(glia.decoder_mlp(x, p), x + blk:mlp_update(x)),
                 t.maxdiff(glia.decoder_mlp(x2, p, 1e-5), x2 + blk:mlp_update(x2)))
    if not t.ok(d <= TOL, format("B=%d: decoder_mlp is the MLP sub-layer alone", B)) then
      t.diag(format("max difference %g", d))
    end
  end
  local blk = block {}
  local p = blk:_fused_params()
  local x = glia.randn(1, 1, C)
  local kc, vc = glia.zeros(1, H, 4, C / H), glia.zeros(1, H, 4, C / H)
  local xs = glia.randn(C, 3, 2):permute(3, 2, 1) -- {2,3,C}, strided
  t.near(glia.decoder_mlp(xs, p), xs + blk:mlp_update(xs), TOL,
         "decoder_mlp on a strided input equals the module path")
  t.error_like(function() decoder_block(x, p, kc, vc, 0, H, 1e-5, "mlp") end,
               'part must be "block" or "attn", got "mlp"', "an unknown part is an error")
  -- decoder_mlp's errors name decoder_mlp (not decoder_block), and it
  -- checks only the MLP's parameters, the ones it reads.
  local DM = ": glia%.decoder_mlp: "
  t.error_like(function() glia.decoder_mlp(x, { p[1] }) end, DM .. "expected 12 parameters",
               "decoder_mlp checks the parameter count, naming itself")
  t.error_like(function() glia.decoder_mlp(glia.randn(1, 1, C + 1), p) end,
               DM .. "x {1,1,33} does not match ln2%.weight {32}",
               "decoder_mlp checks x against ln2.weight, naming itself")
  t.error_like(function() glia.decoder_mlp(x:to("f64"), p) end, DM .. "x must be f32",
               "decoder_mlp checks x's dtype, naming itself")
  local q = { unpack(p) }
  q[9] = glia.randn(7, C)
  t.error_like(function() glia.decoder_mlp(x, q) end, DM .. "fc%.bias must be {7}",
               "decoder_mlp checks the MLP's shapes, naming itself")
end)
t.error_like(function()
  local blk = block {}
  local x = glia.randn(1, 1, C)
  x:requires_grad()
  glia.decoder_mlp(x, blk:_fused_params())
end, ": glia%.decoder_mlp: inference only", "decoder_mlp is inference only, naming itself")
do -- in grad mode: attention parameters that require grad do not make it refuse
  local p = block {}:_fused_params()
  local junk = {}
  for i = 1, 12 do junk[i] = p[i]:detach() end
  for i = 1, 6 do junk[i] = glia.randn(3):requires_grad() end -- ln1, qkv, proj: wrong shapes
  local x, xs = glia.randn(1, 1, C), glia.randn(2, 3, C)
  local ok, err = pcall(function()
    local want1, want2 = glia.no_grad(function()
      return glia.decoder_mlp(x, p), glia.decoder_mlp(xs, p)
    end)
    return u.identical(glia.decoder_mlp(x, junk), want1)
       and u.identical(glia.decoder_mlp(xs, junk), want2)
  end)
  if not t.ok(ok and err, "decoder_mlp neither checks nor reads the attention's parameters "
                          .. "(ln1, qkv, proj: shapes, requires_grad)") then
    t.diag(tostring(err))
  end
end

-- ================================================================ errors

do
  local blk = block { kv_heads = 2 }                          -- D = 8, qkv {64,32}
  local cache = blk:new_cache(1, 4)
  glia.no_grad(function() blk(glia.randn(1, 2, C), cache) end) -- 2 of 4 positions
  local kc, vc = cache.k, cache.v
  local p = blk:_fused_params()
  local x = glia.randn(1, 1, C)
  local function with(i, v) -- p with entry i replaced by v (nil: removed)
    local q = {}
    for j = 1, 12 do q[j] = p[j] end
    if v == nil then table.remove(q, i) else q[i] = v end
    return q
  end

  -- One test line: fn raises a message matching pattern, and the cache
  -- buffers hold what they held before.
  local function fails(pattern, desc, fn, grad)
    local k0, v0 = kc:clone(), vc:clone()
    local ok, err
    if grad then ok, err = pcall(fn)
    else ok, err = glia.no_grad(function() return pcall(fn) end) end
    local raised = not ok and tostring(err):find(pattern) ~= nil
    local kept = u.identical(kc, k0) and u.identical(vc, v0)
    if not t.ok(raised and kept, desc) then
      t.diag(ok and "no error raised" or "error was: " .. tostring(err))
      if not kept then t.diag("the cache buffers changed") end
    end
  end

  local DB = "glia%.decoder_block: "
  fails(DB .. "x must be {B,T,C}, got {1,32}", "x not 3-D is an error naming its shape",
        function() decoder_block(glia.randn(1, C), p, kc, vc, 2, H) end)
  fails(DB .. "x must be f32, got f64", "a non-f32 x is an error naming its dtype",
        function() decoder_block(x:to("f64"), p, kc, vc, 2, H) end)
  fails(DB .. ".*[{,]16[},]", "x of width 16 against a block of width 32 is an error naming 16",
        function() decoder_block(glia.randn(1, 1, 16), p, kc, vc, 2, 2) end)
  fails(DB .. "x {1,1,32} does not match ln1%.weight {16}",
        "an ln1 weight not matching x's last dim is an error naming both sizes",
        function() decoder_block(x, with(1, glia.ones(16)), kc, vc, 2, H) end)
  fails(DB .. "expected 12 parameters .*got 11", "a list of 11 parameters is an error",
        function() decoder_block(x, with(12, nil), kc, vc, 2, H) end)
  fails(DB .. "qkv%.weight must be {64,32}, got {32,64}",
        "a transposed qkv weight is an error naming both shapes",
        function() decoder_block(x, with(3, p[3]:t()), kc, vc, 2, H) end)
  fails(DB .. "fc2%.bias must be {32}, got {31}", "a bias of the wrong length is an error",
        function() decoder_block(x, with(12, glia.zeros(31)), kc, vc, 2, H) end)
  fails(DB .. "ln1%.bias must be f32, got f64", "a non-f32 parameter is an error naming it",
        function() decoder_block(x, with(2, p[2]:to("f64")), kc, vc, 2, H) end)
  fails(DB .. "for x {1,1,32} with 4 heads the caches must be .*got {1,2,4,8} and {1,2,5,8}",
        "key and value caches of different shapes are an error naming both",
        function() decoder_block(x, p, kc, glia.zeros(1, 2, 5, 8), 2, H) end)
  fails(DB .. "for x .* the caches must be {1,K,cap,8}.*got {2,2,4,8}",
        "a cache of another batch size is an error naming its shape",
        function() decoder_block(x, p, glia.zeros(2, 2, 4, 8), glia.zeros(2, 2, 4, 8), 2, H) end)
  fails(DB .. "5 heads do not divide d_model 32", "n_heads not dividing d_model is an error",
        function() decoder_block(x, p, kc, vc, 2, 5) end)
  fails(DB .. "64 heads do not divide d_model 32", "more heads than d_model is an error",
        function() decoder_block(x, p, kc, vc, 2, 64) end)
  fails(DB .. "eps must be >= 0, got %-1", "a negative eps is an error (the one-row path)",
        function() decoder_block(x, p, kc, vc, 2, H, -1) end)
  fails(DB .. "eps must be >= 0, got %-1", "a negative eps is an error (two rows)",
        function() decoder_block(glia.randn(1, 2, C), p, kc, vc, 2, H, -1) end)
  fails(DB .. "the key and value caches share memory", "one tensor as both caches is an error",
        function() decoder_block(x, p, kc, kc, 2, H) end)
  fails(DB .. "in%-place op on an expanded tensor", "an expanded (stride 0) cache is an error",
        function()
          local e = kc:narrow(3, 1, 1):expand(1, 2, 4, 8)
          decoder_block(x, p, e, vc, 2, H)
        end)
  fails(DB .. "2 cached %+ 3 new positions exceed the cache capacity 4",
        "len + T past the cache's capacity is an error naming the lengths",
        function() decoder_block(glia.randn(1, 3, C), p, kc, vc, 2, H) end)
  fails(DB .. "cached length must be >= 0, got %-1", "a negative len is an error",
        function() decoder_block(x, p, kc, vc, -1, H) end)
  fails(DB .. "%d+ cached %+ 1 new positions exceed the cache capacity 4",
        "a len near the integer limit is refused, not wrapped",
        function() decoder_block(x, p, kc, vc, math.maxinteger or 2 ^ 53, H) end)
  local plain = {}
  for i = 1, 12 do plain[i] = p[i]:detach() end
  fails(DB .. "inference only, but an input requires grad",
        "an x that requires grad in grad mode is an error",
        function() decoder_block(glia.randn(1, 1, C):requires_grad(), plain, kc, vc, 2, H) end,
        true)
  fails(DB .. "inference only, but an input requires grad",
        "parameters that require grad in grad mode are an error",
        function() decoder_block(x, p, kc, vc, 2, H) end, true)
  local k2, v2 = kc:clone(), vc:clone()
  local ok = pcall(decoder_block, x, plain, k2, v2, 2, H)
  t.ok(ok and glia.is_grad_enabled(), "in grad mode, inputs that require no grad are accepted")
  ok = pcall(glia.no_grad, function()
    return decoder_block(glia.randn(1, 1, C):requires_grad(), p, k2, v2, 2, H)
  end)
  t.ok(ok, "under glia.no_grad, inputs that require grad are accepted")
end

do -- the module checks x against the cache before growing it
  local blk = block {}
  local cache = blk:new_cache(1, 4)
  local ok, err = pcall(glia.no_grad, function() return blk(glia.randn(2, 100, C), cache) end)
  t.ok(not ok and tostring(err):find("glia%.nn%.TransformerBlock: expected input {1,T,32}")
       and cache:capacity() == 4 and cache:len() == 0,
       "a batch the cache was not made for is an error, and the cache is not grown")
  ok, err = pcall(glia.no_grad, function() return blk(glia.randn(1, 100, 16), cache) end)
  t.ok(not ok and tostring(err):find("got {1,100,16}") and cache:capacity() == 4,
       "so is an input of the wrong width")
end

-- ============================================================== kv_cache

glia.no_grad(function()
  local B, Hkv, d = 2, 2, 4
  local k1, v1 = glia.randn(B, Hkv, 2, d), glia.randn(B, Hkv, 2, d)
  local c = KV.new(B, Hkv, d, 2)
  c:append(k1, v1)
  local kbuf = c.k
  t.ok(c:reserve(0) == c and rawequal(c.k, kbuf) and c:capacity() == 2,
       "reserve within the capacity returns the cache and keeps its buffers")
  c:reserve(3)
  t.ok(c:capacity() >= 5 and c:len() == 2,
       "reserve(n) grows the capacity to at least len + n and keeps the length")
  t.ok(u.identical(c.k:narrow(3, 1, 2), k1) and u.identical(c.v:narrow(3, 1, 2), v1),
       "reserve keeps the cached keys and values")

  local k2, v2 = glia.randn(B, Hkv, 1, d), glia.randn(B, Hkv, 1, d)
  c.k:narrow(3, 3, 1):copy_(k2)
  c.v:narrow(3, 3, 1):copy_(v2)
  t.ok(c:advance(1) == c and c:len() == 3, "advance(n) counts n more positions")
  local ref = KV.new(B, Hkv, d, 8)
  ref:append(glia.cat({ k1, k2 }, 3), glia.cat({ v1, v2 }, 3))
  local q = glia.randn(B, 4, 1, d)
  t.near(c:attend(q), ref:attend(q), TOL,
         "attend reads the positions written in place and advanced as appended ones")

  local room = c:capacity() - c:len()
  t.error_like(function() c:advance(room + 1) end,
               "glia%.kv_cache: advance by " .. room + 1 .. " past the capacity",
               "advance past the capacity is an error naming glia.kv_cache")
  t.is(c:len(), 3, "a failed advance leaves the length")
  c:advance(room)
  t.is(c:len(), c:capacity(), "advance up to the capacity is accepted")
  for _, bad in ipairs { -1, 1.5, math.huge } do
    t.error_like(function() c:reserve(bad) end,
                 "glia%.kv_cache: reserve count must be a non%-negative integer",
                 "reserve(" .. bad .. ") is an error")
    t.error_like(function() c:advance(bad) end,
                 "glia%.kv_cache: advance count must be a non%-negative integer",
                 "advance(" .. bad .. ") is an error")
  end
end)

do -- the module path's MLP is GPT-2's tanh GELU, not glia.gelu's exact default
  local blk = block()
  local x = glia.randn(1, 3, C)
  local h = x + blk.attn(blk.ln1(x))
  local want = h + blk.fc2(glia.gelu(blk.fc(blk.ln2(h)), "tanh"))
  t.ok(u.identical(blk(x), want), "TransformerBlock's MLP uses the tanh form of GELU, as before")
end

-- =================================================================== GPT

do
  glia.manual_seed(SEED)
  local model = GPT{ vocab_size = 11, d_model = 32, n_layers = 2, n_heads = 4, ctx = 16 }
  local blocks = 0
  for _, blk in ipairs(model.blocks) do
    if getmetatable(blk) == nn.TransformerBlock then blocks = blocks + 1 end
  end
  t.is(blocks, 2, "models/gpt.lua builds its blocks as nn.TransformerBlock")
  local prompt = glia.randint(1, 12, 2, 3)
  local before = fused_calls
  local a = model:generate(prompt, 20, { temperature = 0 })
  local used = fused_calls - before
  for _, blk in ipairs(model.blocks) do blk.fused = false end
  before = fused_calls
  local b = model:generate(prompt, 20, { temperature = 0 })
  t.ok(used > 0 and fused_calls == before,
       "generate uses decoder_block, and not once every block has fused = false")
  t.ok(a:size(2) == 23 and u.identical(a, b),
       "greedy generation of 20 tokens past ctx 16 gives the same tokens on both paths")
end

glia.decoder_block = decoder_block
t.done()

-- t/mha.t -- nn.MultiHeadAttention: grouped key/value heads, causal and
-- masked attention, fused and composed paths, the KV-cache forward.
local t = require "t.tap"
local glia = require "glia"
local nn = require "glia.nn"

glia.manual_seed(5)
local B, T, C = 2, 7, 32

local function same(a, b, tol, what) t.near(a, b, tol, what) end

for _, case in ipairs { { H = 4, Hkv = 4 }, { H = 4, Hkv = 2 }, { H = 4, Hkv = 1 } } do
  for _, causal in ipairs { true, false } do
    local tag = string.format("H=%d Hkv=%d causal=%s", case.H, case.Hkv, tostring(causal))
    local m = nn.MultiHeadAttention(C, case.H, { kv_heads = case.Hkv, causal = causal })
    local x = glia.randn(B, T, C)
    local fused = m(x)
    m.fused = false
    local composed = m(x)
    m.fused = nil
    same(fused, composed, 1e-5, tag .. ": fused and composed paths agree")
    t.is(m.qkv.weight:size(1), (case.H + 2 * case.Hkv) * (C / case.H),
         tag .. ": the fused QKV projection has (H + 2 Hkv) D outputs")
  end
end

do -- causality and the cache
  local m = nn.MultiHeadAttention(C, 4, { kv_heads = 2, causal = true })
  m:eval()
  local x = glia.randn(1, T, C)
  local full = m(x)
  local cache = m:new_cache(1, 3)
  local rows = {}
  glia.no_grad(function()
    for i = 1, T do rows[i] = m(x:narrow(2, i, 1), cache) end
  end)
  same(glia.cat(rows, 2), full, 1e-5, "token-by-token decoding with a GQA cache equals the full forward")
  local x2 = x:clone()
  x2[{ 1, T, {} }] = 0
  same(m(x2):narrow(2, 1, T - 1), full:narrow(2, 1, T - 1), 0,
       "changing the last token leaves earlier outputs unchanged")
end

do -- masks: a padding mask hides keys
  local m = nn.MultiHeadAttention(C, 4, { kv_heads = 2 })
  local x = glia.randn(B, T, C)
  local keep = glia.ones(B, 1, 1, T, "bool")
  keep[{ {}, {}, {}, { T - 1, T } }] = false
  local y = m(x, nil, keep)
  local x2 = x:clone()
  x2[{ {}, { T - 1, T }, {} }] = 5
  local y2 = m(x2, nil, keep)
  same(y:narrow(2, 1, T - 2), y2:narrow(2, 1, T - 2), 1e-5,
       "a padding mask makes hidden positions irrelevant to the others")
  m.fused = false
  same(m(x, nil, keep), y, 1e-5, "the composed path applies the same bool mask")
end

do -- gradients reach every parameter through the fused GQA path
  local m = nn.MultiHeadAttention(C, 4, { kv_heads = 1, causal = true })
  m(glia.randn(B, T, C)):sum():backward()
  local all = true
  for _, p in ipairs(m:parameters()) do all = all and p.grad ~= nil end
  t.ok(all, "backward gives every parameter a gradient")
end

t.error_like(function() nn.MultiHeadAttention(32, 4, { kv_heads = 3 }) end, "not a multiple of kv_heads",
             "kv_heads must divide n_heads")
t.done()

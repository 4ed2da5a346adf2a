-- t/skip.t -- glia.skip (stdlib/glia/skip.lua) and its execution in
-- nn.TransformerBlock and models/gpt.lua: Unified Layer Skipping keep-sets
-- (the spec's examples, as 1-based layers); an empty plan is bitwise the
-- plain model; a dropped sub-layer is a zero function and evaluates
-- nothing (counted calls); KV compaction equals the full cache and holds
-- kept/L of its bytes; ULS decoding equals a cache-free recomputation to
-- 1e-5; a ragged batch decodes as each sequence alone; releasing the
-- skipped layers' caches changes nothing; the similarity statistic against
-- a direct double-precision computation, batch-order invariant, 1 for a
-- zero module; selection by hand and iteratively; gradients under a plan
-- in f64 against a naive Lua transformer; contrib and effect against a
-- naive recomputation on a 2-layer toy; bad input.
--
-- Models are tiny with parameters drawn large (N(0, 0.5)) so that every
-- layer changes the output and a wrong plan shows.
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local glia = require "glia"
local nn = require "glia.nn"
local u = require "t.util"
local skip = require "glia.skip"
local GPT = require "models.gpt"

u.seed(20261206)

local abs, max, sqrt, exp, huge = math.abs, math.max, math.sqrt, math.exp, math.huge
local unpack = table.unpack or unpack

local function randomize(m, scale)
  glia.no_grad(function()
    for _, p in ipairs(m:parameters()) do p:copy_(glia.randn(p:shape()) * (scale or 0.5)) end
  end)
end

local function tiny(L, ctx)
  local m = GPT { vocab_size = 13, d_model = 16, n_layers = L, n_heads = 2, ctx = ctx or 32 }
  randomize(m)
  m:eval()
  return m
end

local function ids(B, T) return glia.randint(1, 14, B, T) end

-- ============================================================ keep-sets

-- The spec's examples, 0-based, as plan_uniform's 1-based decode lists.
local function plus1(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = v + 1 end
  return out
end
local function range(a, b, step)
  local out = {}
  for v = a, b, step do out[#out + 1] = v end
  return out
end
local function with(list, v) list[#list + 1] = v return list end

local EXAMPLES = {
  { 30, 2, with(range(0, 26, 2), 29) },
  { 30, 3, with(range(0, 24, 3), 29) },
  { 30, 5, { 0, 6, 12, 18, 24, 29 } },
  { 30, 10, { 0, 15, 29 } },
  { 32, 4, with(range(0, 24, 4), 31) },
}
for _, e in ipairs(EXAMPLES) do
  local L, s, want = e[1], e[2], plus1(e[3])
  local p = skip.plan_uniform(L, s)
  t.is(table.concat(p.decode, ","), table.concat(want, ","),
       ("ULS keep-set L = %d, s = %d: %d layers, the spec's example"):format(L, s, #want))
end
t.is(table.concat(skip.plan_uniform(8, 2, { rule = "even" }).decode, ","), "1,3,6,8",
     "the even rule spreads the kept layers by rounding i (L-1)/(n_keep-1)")
t.ok(skip.plan_uniform(8, 1):empty() and skip.plan_drop(8, {}):empty(),
     "s = 1 and a plan dropping nothing are empty")
t.error_like(function() skip.plan_uniform(8, 5) end, "keeps 1 of 8 layers; at least two",
             "a ULS plan keeping fewer than two layers is rejected")
t.error_like(function() skip.plan_uniform(8, 0.5) end, "s must be a number >= 1, got 0.5",
             "s < 1 is rejected")
t.error_like(function() skip.plan_uniform(8, 2, { rule = "odd" }) end, "rule must be",
             "an unknown keep-set rule is rejected")
t.error_like(function() skip.plan_drop(8, { attn = { 9 } }) end, "attn layer 9 is out of range 1..8",
             "a layer index out of range is rejected")
t.error_like(function() skip.plan_drop(8, { mlp = { 1.5 } }) end,
             "mlp layer 1%.5 is not an integer layer index in 1%.%.8",
             "a fractional layer index is rejected")
-- a spec's lists are lists of layer indices: nothing in them is ignored
t.error_like(function() skip.plan_drop(8, { attn = { "3" } }) end,
             'glia%.skip%.plan_drop: attn entry 1 must be a layer index in 1%.%.8, '
             .. 'got the string "3"',
             "a layer index given as a string is rejected as a string, not as out of range")
t.error_like(function() skip.plan_drop(8, { attn = { [2] = 5 } }) end,
             "glia%.skip%.plan_drop: attn must be a list of layer indices, "
             .. "got a table with the key 2",
             "a list with a hole is rejected, not ignored")
t.error_like(function() skip.plan_drop(8, { attn = { x = 5 } }) end,
             'glia%.skip%.plan_drop: attn must be a list of layer indices, '
             .. 'got a table with the key "x"',
             "a table with a string key is rejected, not ignored")
t.error_like(function() skip.plan_keep(8, { 1, 2, [4] = 3 }) end,
             "glia%.skip%.plan_keep: kept must be a list of layer indices",
             "plan_keep checks its list the same way")
-- the fewest layers: two, or all of a model with fewer
t.ok(skip.plan_drop(1, {}):empty() and skip.plan_uniform(1, 1):empty()
     and skip.plan_keep(1, { 1 }):empty(),
     "a one-layer model has the empty plan (nothing dropped, s = 1, every layer kept)")
t.is(tostring(skip.plan_drop(1, { attn = { 1 } })), "skip plan{layers=1 attn=1}",
     "a one-layer plan dropping the attention keeps the layer running (its MLP)")
t.error_like(function() skip.plan_drop(1, { block = { 1 } }) end,
             "keeps 0 of 1 layers; at least one must run",
             "a one-layer plan dropping the block is rejected")
t.error_like(function() skip.plan_uniform(1, 2) end, "keeps 0 of 1 layers; at least one must run",
             "a one-layer ULS plan with s = 2 is rejected")
t.error_like(function() skip.plan_drop(2, { block = { 1 } }) end,
             "keeps 1 of 2 layers; at least two must run",
             "a two-layer plan leaving one layer is rejected")
t.error_like(function() skip.plan_drop(8, { heads = { 1 } }) end, "heads",
             "an unknown sub-layer kind is rejected")
t.error_like(function() skip.plan_drop(3, { block = { 1, 2 } }) end,
             "keeps 1 of 3 layers; at least two", "dropping all but one block is rejected")
t.error_like(function() skip.compose(skip.plan_uniform(8, 2), skip.plan_drop(6, {})) end,
             "plan 2 is for 6 layers, plan 1 for 8", "composing plans of different depths fails")
t.error_like(function()
  skip.compose(skip.plan_uniform(8, 2), skip.plan_drop(8, { block = { 1, 3, 5 } }))
end, "keeps 1 of 8 layers", "a composition keeping fewer than two layers is rejected")
do
  local c = skip.compose(skip.plan_uniform(8, 2), skip.plan_drop(8, { attn = { 3, 6 }, mlp = { 5 } }))
  t.is(tostring(c), "skip plan{layers=8 attn=3,6 mlp=5 decode=1,3,5,8}",
       "composition unites the drops and keeps the decode list")
  local d = skip.compose(skip.plan_uniform(8, 2), skip.plan_uniform(8, 2, { rule = "even" }))
  t.is(table.concat(d.decode, ","), "1,3,8", "composed decode lists intersect")
  t.is(tostring(skip.parse(8, "uls:2+attn:3,6+mlp:5")), tostring(c),
       "parse reads the same plan from text")
  t.error_like(function() skip.parse(8, "attn:x") end, "not a layer number", "parse rejects junk")
  t.error_like(function() skip.parse(8, "drop:1") end, "cannot read", "parse rejects unknown kinds")
end

-- ============================================================ execution

local m = tiny(4)
local x = ids(2, 9)
local plain = m(x)

for _, p in ipairs { skip.plan_drop(4, {}), skip.plan_uniform(4, 1), skip.plan_uniform(4, 2) } do
  m:set_plan(p)
  t.ok(u.identical(m(x), plain), "a full-depth forward under " .. tostring(p) ..
       " is bitwise the plain model")
end
m:set_plan(nil)
do
  local g0 = m:generate(x, 6, { temperature = 0 })
  local g1 = m:generate(x, 6, { temperature = 0, plan = skip.plan_drop(4, {}) })
  t.ok(u.identical(g0, g1), "generation under an empty plan is bitwise the plain model's")
end
t.error_like(function() m:set_plan(skip.plan_uniform(6, 2)) end,
             "the plan is for 6 layers, the model has 4", "a plan for another depth is rejected")
t.error_like(function() m:set_plan({ layers = 4 }) end, "expected a plan",
             "a table that is not a plan is rejected")
t.error_like(function() skip.compose(nil, skip.plan_drop(4, {})) end,
             "glia%.skip%.compose: plan 1 must be a plan %(from glia%.skip%), got nil",
             "compose(nil, p) is an error naming the argument")
for _, n in ipairs { "nil", 1.5, 0 / 0, -1 } do
  local shown = n ~= n and "NaN" or tostring(n)
  t.error_like(function() m:generate(x, n ~= "nil" and n or nil) end,
               "models%.gpt: generate's n %(the number of new tokens%) must be an integer >= 0, "
               .. "got " .. shown:gsub("%p", "%%%0"), "generate rejects n = " .. shown)
end
t.error_like(function() skip.kv_release(nil, m) end,
             "glia%.skip%.kv_release: expected the caches", "kv_release(nil, m) is an error")
t.error_like(function() skip.kv_bytes(nil) end,
             "glia%.skip%.kv_bytes: expected the caches", "kv_bytes(nil) is an error")
t.error_like(function() skip.kv_bytes({ 5 }) end,
             "glia%.skip%.kv_bytes: caches%[1%] is not a KV cache",
             "kv_bytes of a table of non-caches is an error")

-- A plan is checked where it is applied, not only where it is built: one
-- edited afterwards fails in set_plan, generate and compose, and leaves
-- the plan in force alone.
do
  local p = skip.plan_uniform(4, 2)
  p.decode = {}
  t.error_like(function() m:generate(x, 3, { plan = p }) end,
               "models%.gpt: generate: the plan keeps 0 of 4 layers; at least two must run",
               "generate rejects a plan whose decode list was emptied after it was built")
  local q = skip.plan_drop(4, {})
  q.attn, q.mlp = { 1, 2, 3, 4 }, { 1, 2, 3, 4 }
  t.error_like(function() m:set_plan(q) end,
               "models%.gpt: set_plan: the plan keeps 0 of 4 layers; at least two must run",
               "model:set_plan rejects a plan edited to drop every layer")
  t.error_like(function() skip.set_plan(m, q) end, "glia%.skip%.set_plan: the plan keeps 0 of 4",
               "skip.set_plan rejects it too")
  t.ok(skip.get_plan(m) == nil and m.blocks[1].skip == nil,
       "and the plan in force is left as it was")
  local r = skip.plan_drop(4, { attn = { 2 } })
  r.mlp = { 5 }
  t.error_like(function() m:set_plan(r) end, "the plan's mlp layer 5 is out of range 1%.%.4",
               "a plan edited to name a layer the model lacks is rejected")
  r.mlp = { "2" }
  t.error_like(function() skip.compose(skip.plan_drop(4, {}), r) end,
               "glia%.skip%.compose: the plan's mlp entry 1 must be a layer index in 1%.%.4, "
               .. 'got the string "2"',
               "compose checks the plans it is given")
end

-- A dropped sub-layer is the zero function: the same as zeroing the
-- weights and biases that write its output.
local function zeroed(src, l, kind)
  local c = tiny(4)
  c:load_state_dict(src:state_dict())
  local b = c.blocks[l]
  local last = kind == "attn" and b.attn.proj or b.fc2
  glia.no_grad(function() last.weight:zero_() last.bias:zero_() end)
  return c
end
for _, case in ipairs { { "attn", 2 }, { "mlp", 3 }, { "attn", 1 } } do
  local kind, l = case[1], case[2]
  m:set_plan(skip.plan_drop(4, { [kind] = { l } }))
  local got = m(x)
  m:set_plan(nil)
  t.near(got, zeroed(m, l, kind)(x), 1e-7,
         ("dropping the %s of layer %d equals a zero %s"):format(kind, l, kind))
end

-- Evaluates nothing: count the layer norms, linear layers and fused blocks.
local F = nn.F
local counts
local function counting(fn, key)
  return function(...)
    counts[key] = (counts[key] or 0) + 1
    return fn(...)
  end
end
local real_ln, real_linear, real_block, real_mlp = F.layer_norm, F.linear, glia.decoder_block,
  glia.decoder_mlp
local function count(fn)
  counts = {}
  F.layer_norm, F.linear = counting(real_ln, "ln"), counting(real_linear, "linear")
  glia.decoder_block = function(...)
    local part = select(8, ...) or "block"
    counts[part] = (counts[part] or 0) + 1
    return real_block(...)
  end
  glia.decoder_mlp = counting(real_mlp, "mlp")
  local ok, err = pcall(fn)
  F.layer_norm, F.linear, glia.decoder_block, glia.decoder_mlp = real_ln, real_linear, real_block,
    real_mlp
  assert(ok, err)
  return counts
end
do
  local c = count(function() m(x) end)
  t.ok(c.ln == 9 and c.linear == 17, ("the plain forward: 9 norms, 17 linears (got %s, %s)")
       :format(c.ln, c.linear))
  m:set_plan(skip.plan_drop(4, { attn = { 2 }, mlp = { 3 }, block = { 4 } }))
  c = count(function() m(x) end)
  t.ok(c.ln == 5 and c.linear == 9,
       ("dropping 4 sub-layers evaluates 4 norms and 8 linears fewer (got %s, %s)")
       :format(c.ln, c.linear))
  -- decoding: kept whole blocks take the fused path, the others only their kept sub-layer
  local caches = m:new_caches(2)
  glia.no_grad(function() m:forward(x, caches, 0) end)
  c = count(function() glia.no_grad(function() m:forward(ids(2, 1), caches, 9) end) end)
  t.ok(c.block == 1 and c.mlp == 1 and c.attn == 1 and c.ln == 1 and c.linear == 1,
       ("a decode step: layer 1 fused whole, 2's MLP and 3's attention fused alone, 4 not at " ..
        "all (got %s, %s, %s; %s norm, %s linear: the head's)")
       :format(c.block, c.mlp, c.attn, c.ln, c.linear))
  m:set_plan(skip.plan_uniform(4, 2)) -- decode through 1 and 4
  caches = m:new_caches(2)
  skip.set_prompt_len(m, nil)
  glia.no_grad(function() m:forward(x, caches, 0) end)
  skip.set_prompt_len(m, 0)
  c = count(function() glia.no_grad(function() m:forward(ids(2, 1), caches, 9) end) end)
  skip.set_prompt_len(m, nil)
  t.ok(c.block == 2 and (c.ln or 0) == 1 and c.linear == 1,
       ("a ULS decode step runs layers 1 and 4 fused and nothing of 2, 3 (got %s, %s, %s)")
       :format(c.block, c.ln, c.linear))
  m:set_plan(nil)
end

-- ========================================================= KV compaction

do
  local mm = tiny(4)
  local plan = skip.plan_drop(4, { attn = { 2, 3 } })
  mm:set_plan(plan)
  local compact, kvidx = skip.kv_compact(mm, 2, 32)
  local full = {}
  for l, b in ipairs(mm.blocks) do full[l] = b:new_cache(2, 32) end
  t.ok(compact[2] == nil and compact[3] == nil and kvidx[1] == 1 and kvidx[4] == 2,
       "kv_compact allocates caches for the kept attention layers only, slots 1 and 2")
  t.is(skip.kv_bytes(compact), skip.kv_bytes(full) * 2 / 4,
       "the compacted caches hold kept/L = 2/4 of the full cache's bytes")
  t.is(skip.kv_bytes(mm:new_caches(2)), skip.kv_bytes(compact),
       "models.gpt's new_caches allocates the compacted set under the plan")
  local steps = {}
  for i = 1, 4 do steps[i] = ids(2, 1) end
  local function run(caches)
    return glia.no_grad(function()
      local out = { mm:forward(x, caches, 0) }
      for i = 1, 4 do out[#out + 1] = mm:forward(steps[i], caches, 8 + i) end
      return out
    end)
  end
  local got, want = run(compact), run(full)
  local same = true
  for i = 1, #got do same = same and u.identical(got[i], want[i]) end
  t.ok(same, "a prefill and four decode steps with compacted caches equal the full-size run")
  t.ok(full[2]:len() == 0 and full[3]:len() == 0 and full[1]:len() == 13,
       "the full-size run leaves the dropped layers' caches untouched")
end

-- ============================================================= ULS decode

-- Cache-free reference: the prompt through every layer, generated tokens
-- through the kept ones only (prompt_len = P on the whole sequence).
local function uls_reference(model, seq, P)
  skip.set_prompt_len(model, P)
  local logits = glia.no_grad(function() return model(seq) end)
  skip.set_prompt_len(model, nil)
  return logits
end

do
  local mm = tiny(6)
  local plan = skip.plan_uniform(6, 2) -- decode through 1, 4, 6
  mm:set_plan(plan)
  local P, N = 7, 8
  local prompt = ids(2, P)
  local function decode(release)
    local caches = mm:new_caches(2)
    local out, seq = {}, { prompt }
    glia.no_grad(function()
      skip.set_prompt_len(mm, nil)
      local logits = mm:forward(prompt, caches, 0):select(2, P)
      skip.set_prompt_len(mm, 0)
      if release then out.freed = skip.kv_release(caches, mm) end
      out[1] = logits
      for i = 1, N do
        local id = logits:argmax(-1, true)
        seq[#seq + 1] = id
        logits = mm:forward(id, caches, P + i - 1):select(2, 1)
        out[i + 1] = logits
      end
      skip.set_prompt_len(mm, nil)
    end)
    out.seq = glia.cat(seq, 2)
    out.caches = caches
    return out
  end
  local kept = decode(false)
  local ref = uls_reference(mm, kept.seq, P)
  local worst = 0
  for i = 1, N + 1 do worst = max(worst, t.maxdiff(kept[i], ref:select(2, P + i - 1))) end
  t.ok(worst <= 1e-5, ("ULS decoding with the KV cache equals the cache-free recomputation "
       .. "(max |diff| %.2g <= 1e-5 on logits)"):format(worst))
  t.ok(kept.caches[2]:len() == P and kept.caches[4]:len() == P + N,
       "a skipped layer's cache stays at the prompt, a kept one grows with each token")
  local freed = decode(true)
  local same = u.identical(freed.seq, kept.seq)
  for i = 1, N + 1 do same = same and u.identical(freed[i], kept[i]) end
  t.ok(same, "releasing the skipped layers' caches after the prefill changes no output")
  t.ok(freed.caches[2] == nil and freed.caches[3] == nil and freed.caches[5] == nil
       and freed.freed == 3 * skip.kv_bytes({ kept.caches[1] }),
       "kv_release frees the three skipped layers' caches")
  local g = mm:generate(prompt, N, { temperature = 0, plan = plan })
  t.ok(u.identical(g, kept.seq), "model:generate under the plan gives the same tokens")
  mm:set_plan(nil)
  local g2 = mm:generate(prompt, N, { temperature = 0, plan = plan })
  t.ok(u.identical(g2, g) and skip.get_plan(mm) == nil,
       "generate's plan is in force for the call only")
  -- past the context the caches restart at full depth: still runs
  local long = mm:generate(prompt, 40, { temperature = 1, plan = plan })
  t.is(long:size(2), P + 40, "generation under a plan runs past the context")

  -- ragged batch: three prompts of different lengths, right-padded
  local lens = { 3, 7, 5 }
  local padded = ids(3, 7)
  for _, pl in ipairs { plan, skip.compose(plan, skip.plan_drop(6, { attn = { 3 } })), nil } do
    local batch = mm:generate(padded, 6, { temperature = 0, plan = pl, lengths = lens })
    local ok = true
    for b, l in ipairs(lens) do
      local alone = mm:generate(padded:narrow(1, b, 1):narrow(2, 1, l), 6,
                                { temperature = 0, plan = pl })
      ok = ok and u.identical(batch:narrow(1, b, 1):narrow(2, 1, l + 6), alone)
      if l < 7 then ok = ok and batch:narrow(1, b, 1):narrow(2, l + 7, 7 - l):ne(0):to("f32"):sum():item() == 0 end
    end
    t.ok(ok, "a ragged batch (prompts of 3, 7, 5) decodes as each sequence alone, under "
         .. tostring(pl))
  end
  t.error_like(function() mm:generate(padded, 30, { lengths = lens }) end,
               "within the context of 32", "a ragged batch must fit the context")
  t.error_like(function() mm:generate(padded, 3, { lengths = { 1, 8, 1 } }) end,
               "prompt length 8 of sequence 2", "a prompt length past the padded width fails")
end

-- ========================================================== similarity

local function rows(tensor) -- {B,T,C} -> list of B*T rows (Lua tables)
  local B, T, C = tensor:size(1), tensor:size(2), tensor:size(3)
  return t.flat(tensor:contiguous():view(B * T, C):totable(), {}), C
end

local function cos_direct(xs, ys, C)
  local s, n = 0, #xs / C
  for i = 0, n - 1 do
    local xy, xx, yy = 0, 0, 0
    for j = 1, C do
      local a, b = xs[i * C + j], ys[i * C + j]
      xy, xx, yy = xy + a * b, xx + a * a, yy + b * b
    end
    s = s + xy / max(sqrt(xx * yy), 1e-8)
  end
  return s / n
end

do
  local mm = tiny(3)
  local b1, b2 = ids(2, 6), ids(3, 6)
  local s = skip.similarity(mm, { b1, b2 })
  -- direct: run the blocks by hand over both batches, cosines over all tokens
  local want = { attn = {}, mlp = {}, block = {} }
  local acc = { attn = {}, mlp = {}, block = {} }
  for _, b in ipairs { b1, b2 } do
    glia.no_grad(function()
      local h = mm.tok(b) + mm.pos.weight:narrow(1, 1, 6)
      for l, blk in ipairs(mm.blocks) do
        local a = h + blk:attn_update(h)
        local y = a + blk:mlp_update(a)
        for kind, pair in pairs { attn = { h, a }, mlp = { a, y }, block = { h, y } } do
          acc[kind][l] = acc[kind][l] or { x = {}, y = {} }
          for _, v in ipairs((rows(pair[1]))) do table.insert(acc[kind][l].x, v) end
          for _, v in ipairs((rows(pair[2]))) do table.insert(acc[kind][l].y, v) end
        end
        h = y
      end
    end)
  end
  local worst = 0
  for _, kind in ipairs { "attn", "mlp", "block" } do
    for l = 1, 3 do
      want[kind][l] = cos_direct(acc[kind][l].x, acc[kind][l].y, 16)
      worst = max(worst, abs(want[kind][l] - s[kind][l]))
    end
  end
  t.ok(worst < 1e-6 and s.tokens == 30,
       ("similarity equals the direct computation over all 30 tokens (max diff %.2g)"):format(worst))
  local r = skip.similarity(mm, { b2, b1 })
  local wo = 0
  for _, kind in ipairs { "attn", "mlp", "block" } do
    for l = 1, 3 do wo = max(wo, abs(r[kind][l] - s[kind][l])) end
  end
  t.ok(wo < 1e-12, ("the statistic is invariant to batch order (diff %.2g)"):format(wo))
  -- a zero attention sub-layer: S = 1 exactly, and it is dropped first
  glia.no_grad(function() mm.blocks[2].attn.proj.weight:zero_() mm.blocks[2].attn.proj.bias:zero_() end)
  local z = skip.similarity(mm, b1)
  t.is(z.attn[2], 1, "a sub-layer whose F outputs 0 scores exactly 1")
  local plan, picks = skip.select(z, 1, { mode = "joint" })
  t.ok(picks[1].kind == "attn" and picks[1].layer == 2 and table.concat(plan.attn, ",") == "2",
       "and is the first one dropped")
  mm:set_plan(plan)
  local d = skip.similarity(mm, b1)
  t.ok(d.attn[2] == -huge and d.mlp[2] > -huge, "a module the plan drops scores -inf")
  mm:set_plan(nil)
  t.error_like(function() skip.similarity(mm, glia.zeros(2, 6)) end,
               "calibration batch 1 must be integer token ids {B,T}, got f32",
               "float calibration batches are rejected")
  t.error_like(function() skip.similarity(mm, { ids(2, 6), glia.zeros(2, 6, 1, "i64") }) end,
               "calibration batch 2 must be integer token ids {B,T}",
               "calibration batches of the wrong rank are rejected")
  -- an empty batch would average over no tokens (NaN scores): an error
  t.error_like(function() skip.similarity(mm, glia.zeros(0, 5, "i64")) end,
               "glia%.skip%.similarity: calibration batch 1 is empty %(i64 {0,5}%)",
               "similarity on an empty batch {0,5} is an error naming it and the shape")
  t.error_like(function() skip.contrib(mm, { ids(2, 6), glia.zeros(2, 0, "i64") }) end,
               "glia%.skip%.contrib: calibration batch 2 is empty %(i64 {2,0}%)",
               "contrib on an empty batch {2,0} is an error naming it and the shape")
  t.error_like(function() skip.effect(mm, glia.zeros(2, 0, "i64")) end,
               "glia%.skip%.effect: calibration batch 1 is empty %(i64 {2,0}%)",
               "effect on an empty batch is an error naming it and the shape")

  -- selection by hand
  local sc = { layers = 3, attn = { 0.9, 0.5, 0.95 }, mlp = { 0.7, 0.96, 0.1 },
               block = { 0.6, 0.4, 0.8 } }
  local function picked(p)
    local out = {}
    for i, e in ipairs(p) do out[i] = e.kind .. e.layer end
    return table.concat(out, " ")
  end
  local jp, jpicks = skip.select(sc, 3, { mode = "joint" })
  t.is(picked(jpicks), "mlp2 attn3 attn1", "joint ranks attention and MLP scores together")
  t.is(tostring(jp), "skip plan{layers=3 attn=1,3 mlp=2}", "into a plan dropping those")
  t.is(picked(select(2, skip.select(sc, 2))), "attn3 attn1", "attn mode ranks attention only")
  t.is(picked(select(2, skip.select(sc, 2, { mode = "mlp" }))), "mlp2 mlp1", "mlp mode")
  t.is(tostring((skip.select(sc, 1, { mode = "block" }))), "skip plan{layers=3 attn=3 mlp=3}",
       "block mode drops whole blocks")
  t.error_like(function() skip.select(sc, 4) end, "cannot drop 4 attention sub%-layers: 3 remain",
               "selecting more modules than exist fails")
  t.error_like(function() skip.select(sc, 1, { mode = "heads" }) end, "mode must be",
               "an unknown mode fails")
  t.error_like(function() skip.select(sc, 1, { iterative = true }) end, "needs opts.model",
               "iterative selection needs the model")
  -- scores select ranks must all be there and be numbers: a NaN is not
  -- silently left out of the ranking
  t.error_like(function() skip.select({ layers = 4, attn = {} }, 1) end,
               "glia%.skip%.select: scores%.attn%[1%] must be a number, got nil",
               "a missing score is an error naming it")
  local nan_sc = { layers = 3, attn = { 0.9, 0.5, 0.95 }, mlp = { 0.7, 0 / 0, 0.1 } }
  t.error_like(function() skip.select(nan_sc, 1, { mode = "joint" }) end,
               "glia%.skip%.select: scores%.mlp%[2%] must be a number, got NaN",
               "a NaN score is an error naming it")
  t.error_like(function() skip.select({ layers = 3, attn = { 1, 1, 1 } }, 1, { mode = "mlp" }) end,
               "glia%.skip%.select: the scores have no mlp list",
               "scores without the list the mode ranks are an error")
  -- a selection that would leave too few layers names select, not plan_drop
  local m4 = tiny(4)
  local s4 = skip.similarity(m4, { ids(2, 6) })
  t.error_like(function() skip.select(s4, 8, { mode = "joint" }) end,
               "glia%.skip%.select: the plan keeps 0 of 4 layers; at least two must run",
               "selecting all 8 sub-layers of 4 layers is an error naming select")
  -- iterative on a model
  local m2 = tiny(4)
  local cal = { ids(2, 8) }
  local s2 = skip.similarity(m2, cal)
  local one = select(2, skip.select(s2, 1, { mode = "joint" }))
  local it1 = select(2, skip.select(s2, 1, { mode = "joint", iterative = true, model = m2,
                                             batches = cal }))
  t.is(picked(it1), picked(one), "iterative equals one-shot for n = 1")
  local itp, it5 = skip.select(s2, 5, { mode = "joint", iterative = true, model = m2,
                                        batches = cal })
  local seen, again = {}, false
  for _, e in ipairs(it5) do
    again = again or seen[e.kind .. e.layer]
    seen[e.kind .. e.layer] = true
  end
  t.ok(not again and #it5 == 5 and #itp.attn + #itp.mlp == 5 and skip.get_plan(m2) == nil,
       "iterative selection picks 5 distinct modules and leaves the model's plan alone")
end

-- plan_keep and the ULS training loss
do
  local k = skip.plan_keep(6, { 1, 2, 3 })
  t.is(tostring(k), "skip plan{layers=6 decode=1,2,3}", "plan_keep lists the layers tokens run")
  t.ok(skip.plan_keep(4, { 1, 2, 3, 4 }):empty(), "keeping every layer is the empty plan")
  t.error_like(function() skip.plan_keep(6, { 1 }) end, "keeps 1 of 6", "plan_keep needs two")
  local mm = tiny(4)
  mm:set_plan(skip.plan_uniform(4, 2))
  local xs, ys = ids(2, 8), ids(2, 8)
  local loss = skip.loss(mm, xs, ys, 3)
  local ref = uls_reference(mm, xs, 3)
  local want = glia.cross_entropy(ref:narrow(2, 3, 6), ys:narrow(2, 3, 6))
  t.near(loss, want, 1e-6, "skip.loss scores the response (positions 3..8) under the plan")
  t.error_like(function() skip.loss(mm, xs, ys, 8) end, "prompt length must be in 1..7",
               "a prompt as long as the sequence fails")
  t.error_like(function() skip.loss(mm, nil, ys, 2) end,
               "glia%.skip%.loss: x must be integer token ids {B,T}, got nil", "skip.loss needs x")
  t.error_like(function() skip.loss(mm, xs, nil, 2) end,
               "glia%.skip%.loss: y must be integer token ids {B,T}, got nil", "skip.loss needs y")
  t.error_like(function() skip.loss(mm, glia.randint(1, 14, 5), ys, 2) end,
               "glia%.skip%.loss: x must be integer token ids {B,T}, got i64 {5}",
               "a 1-D x is an error naming its shape (not a prompt range for sequences of 0)")
  t.error_like(function() skip.loss(mm, xs, ids(2, 3), 2) end,
               "glia%.skip%.loss: y i64 {2,3} must have x's shape i64 {2,8}",
               "y of another shape than x is an error naming skip.loss and both shapes")
end

-- ============================================================ gradients

-- A naive f64 transformer over Lua tables: rows h[t][c], parameters as
-- nested tables in _fused_params order.
local function tanh(z) local e = exp(2 * z) return (e - 1) / (e + 1) end
local function ln_ref(v, w, b)
  local C, mean, var = #v, 0, 0
  for i = 1, C do mean = mean + v[i] end
  mean = mean / C
  for i = 1, C do var = var + (v[i] - mean) ^ 2 end
  local r, out = 1 / sqrt(var / C + 1e-5), {}
  for i = 1, C do out[i] = (v[i] - mean) * r * w[i] + b[i] end
  return out
end
local function lin_ref(v, W, b)
  local out = {}
  for o = 1, #W do
    local s = b[o]
    for i = 1, #v do s = s + W[o][i] * v[i] end
    out[o] = s
  end
  return out
end
local function add(a, b) local o = {} for i = 1, #a do o[i] = a[i] + b[i] end return o end
local H = 2
local function attn_ref(h, p)
  local T, C = #h, #h[1]
  local D = C / H
  local qkv = {}
  for i = 1, T do qkv[i] = lin_ref(ln_ref(h[i], p[1], p[2]), p[3], p[4]) end
  local out = {}
  for i = 1, T do
    local y = {}
    for hd = 0, H - 1 do
      local sc, m = {}, -huge
      for j = 1, i do
        local s = 0
        for d = 1, D do s = s + qkv[i][hd * D + d] * qkv[j][C + hd * D + d] end
        sc[j] = s / sqrt(D)
        m = max(m, sc[j])
      end
      local z = 0
      for j = 1, i do sc[j] = exp(sc[j] - m) z = z + sc[j] end
      for d = 1, D do
        local s = 0
        for j = 1, i do s = s + sc[j] / z * qkv[j][2 * C + hd * D + d] end
        y[hd * D + d] = s
      end
    end
    out[i] = lin_ref(y, p[5], p[6])
  end
  return out
end
local function mlp_ref(v, p)
  local f = lin_ref(ln_ref(v, p[7], p[8]), p[9], p[10])
  for i = 1, #f do
    local z = f[i]
    f[i] = 0.5 * z * (1 + tanh(sqrt(2 / math.pi) * (z + 0.044715 * z ^ 3)))
  end
  return lin_ref(f, p[11], p[12])
end
-- x {1,T,C} as {{{...}}}; plan: per layer {attn =, mlp =, decode =}; P prompt length
local function stack_ref(x, params, plan, P)
  local h = x[1]
  for l, p in ipairs(params) do
    local s, T = plan[l] or {}, #h
    local out = h
    if not s.attn then
      local a = attn_ref(out, p)
      local n = {}
      for i = 1, T do n[i] = add(out[i], a[i]) end
      out = n
    end
    if not s.mlp then
      local n = {}
      for i = 1, T do n[i] = add(out[i], mlp_ref(out[i], p)) end
      out = n
    end
    if s.decode then -- positions after P pass this layer
      for i = P + 1, T do out[i] = h[i] end
    end
    h = out
  end
  return { h }
end

-- No gradient reached p (none recorded, or zeros).
local function no_grad(p)
  return p.grad == nil or p.grad:abs():sum():item() == 0
end

do
  local C, T = 4, 3
  local function stack(L)
    local blocks = {}
    for l = 1, L do blocks[l] = nn.TransformerBlock(C, H, { mlp_ratio = 2 }) end
    local s = nn.Sequential(unpack(blocks))
    randomize(s)
    return s, blocks
  end
  local function check(L, plan, P, desc)
    local model, blocks = stack(L)
    skip.set_plan(model, plan)
    if P then skip.set_prompt_len(model, P) end
    local x = glia.randn(1, T, C)
    local inputs, params = { x }, {}
    for l, b in ipairs(blocks) do
      params[l] = b:_fused_params()
      for _, p in ipairs(params[l]) do inputs[#inputs + 1] = p end
    end
    local per = {}
    for l, b in ipairs(blocks) do per[l] = b.skip or {} end
    local function fn() return model(x) end
    local function ref(xv, ...)
      local flat, ps = { ... }, {}
      for l = 1, L do ps[l] = { unpack(flat, (l - 1) * 12 + 1, l * 12) } end
      return stack_ref(xv, ps, per, P or T)
    end
    u.gradcheck_f64(fn, ref, inputs, desc)
    return blocks
  end
  local blocks = check(2, skip.plan_drop(2, { attn = { 2 }, mlp = { 1 } }), nil,
                       "f64 gradients through a stack with layer 2's attention and layer 1's MLP dropped")
  t.ok(no_grad(blocks[2].attn.qkv.weight) and no_grad(blocks[2].ln1.weight)
       and no_grad(blocks[1].fc.weight) and no_grad(blocks[1].ln2.bias),
       "dropped sub-layers get no gradient at all")
  -- ULS training: 3 layers, s = 1.5 keeps 1 and 3; the prompt (2 of 3
  -- positions) runs all, the response only 1 and 3
  local uls = skip.plan_uniform(3, 1.5)
  t.is(table.concat(uls.decode, ","), "1,3", "(a 3-layer plan keeping 1 and 3)")
  blocks = check(3, uls, 2, "f64 gradients of ULS training: prompt through all layers, "
                 .. "the response through the kept ones")
  t.ok(blocks[2].fc2.weight.grad ~= nil and blocks[2].fc2.weight.grad:abs():sum():item() > 0,
       "the skipped layer gets gradient through the prompt pass")
  -- with nothing in the prompt the skipped layer is out of the graph
  local model, bl = stack(3)
  skip.set_plan(model, uls)
  skip.set_prompt_len(model, 0)
  local xx = glia.randn(1, T, C)
  xx:requires_grad()
  model(xx):sum():backward()
  t.ok(no_grad(bl[2].fc2.weight) and not no_grad(bl[1].fc2.weight),
       "without a prompt the skipped layer gets no gradient")
end

-- ========================================================== diagnostics

do
  local mm = tiny(2)
  local b = ids(2, 5)
  local c = skip.contrib(mm, b)
  local e = skip.effect(mm, b)
  local function stream(skipped)
    return glia.no_grad(function()
      local h, deltas = mm.tok(b) + mm.pos.weight:narrow(1, 1, 5), {}
      for l, blk in ipairs(mm.blocks) do
        local y = h
        if l ~= skipped then
          local a = h + blk:attn_update(h)
          y = a + blk:mlp_update(a)
        end
        deltas[l] = { h = h, d = y - h }
        h = y
      end
      return deltas, mm.head(mm.lnf(h))
    end)
  end
  local full, logits = stream()
  local worst = 0
  for l = 1, 2 do
    local hs, ds = rows(full[l].h), rows(full[l].d)
    local cs, as, n = 0, 0, #hs / 16
    for i = 0, n - 1 do
      local dd, hh, dh = 0, 0, 0
      for j = 1, 16 do
        local dv, hv = ds[i * 16 + j], hs[i * 16 + j]
        dd, hh, dh = dd + dv * dv, hh + hv * hv, dh + dv * hv
      end
      cs, as = cs + sqrt(dd) / sqrt(hh), as + dh / sqrt(dd * hh)
    end
    worst = max(worst, abs(cs / n - c.contrib[l]), abs(as / n - c.align[l]))
  end
  t.ok(worst < 1e-5, ("contrib and align equal a naive recomputation (diff %.2g)"):format(worst))
  local sk, sl = stream(1)
  local a1, a2 = rows(sk[2].d), rows(full[2].d)
  local ef, n = 0, #a1 / 16
  for i = 0, n - 1 do
    local num, den = 0, 0
    for j = 1, 16 do
      num = num + (a1[i * 16 + j] - a2[i * 16 + j]) ^ 2
      den = den + a2[i * 16 + j] ^ 2
    end
    ef = ef + sqrt(num) / sqrt(den)
  end
  local lp, lq = glia.log_softmax(logits, -1), glia.log_softmax(sl, -1)
  local kl = (glia.exp(lp) * (lp - lq)):sum():item() / 10
  t.ok(abs(ef / n - e.effect[1][2]) < 1e-5 and abs(kl - e.out[1]) < 1e-5 and e.out[2] > 0,
       ("effect[1][2] and the KL of skipping layer 1 equal a naive recomputation (%.4g %.4g)")
       :format(e.effect[1][2], e.out[1]))
  local tbl = skip.layer_table({ { "contrib", c.contrib }, { "align", c.align } })
  t.ok(tbl:find("| layer | contrib | align |", 1, true) and select(2, tbl:gsub("\n", "")) == 4,
       "layer_table writes a Markdown table, one row per layer")
  local svg = os.tmpname()
  t.ok(skip.plot_layers(svg, { { "contrib", c.contrib } }, { title = "toy" })
       and u.slurp(svg):find("<svg", 1, true), "plot_layers writes an SVG")
  os.remove(svg)
end

-- ============================ examples/train_gpt --plan, examples/skip_study

do
  local bin = os.getenv("GLIA_BIN") or "bin/glia"
  local dir = os.tmpname()
  os.remove(dir)
  local text = dir .. ".txt"
  u.spit(text, string.rep("In the beginning God created the heaven and the earth. ", 40))
  local function run(args)
    local h = io.popen(bin .. " examples/train_gpt.lua --text " .. text .. " " .. args .. " 2>&1")
    local out = h:read("*a")
    h:close()
    return out
  end
  local common = "--d 16 --layers 4 --heads 2 --ctx 16 --batch 2 --eval-every 2 --sample-len 4"
  run(common .. " --steps 2 --out " .. dir .. "-a")
  local out = run("--resume " .. dir .. "-a --out " .. dir .. "-b --plan uls:2+mlp:2 --steps 4")
  t.ok(out:find("plan: skip plan{layers=4 mlp=2 decode=1,4}", 1, true)
       and out:find("step 4: train loss %d+%.%d+, val loss: %d"),
       "train_gpt.lua --plan fine-tunes a checkpoint under the plan")
  t.ok(run("--resume " .. dir .. "-a --out " .. dir .. "-b --plan attn:9 --steps 4")
       :find("train_gpt: glia.skip.plan_drop: attn layer 9 is out of range 1..4", 1, true),
       "train_gpt.lua --plan rejects a plan that does not fit the model")
  for _, f in ipairs { "0", "2" } do
    t.ok(run(common .. " --steps 1 --prompt-frac " .. f .. " --out " .. dir .. "-c")
         :find("train_gpt: --prompt-frac must be in (0, 1), got " .. f, 1, true),
         "train_gpt.lua --prompt-frac " .. f .. " is an error, not clamped")
  end
  -- the study's whole pipeline on that checkpoint, budgets shrunk
  local h = io.popen(bin .. " examples/skip_study.lua --quick --ckpt " .. dir .. "-a --out "
                     .. dir .. "-s 2>&1")
  local sout = h:read("*a")
  h:close()
  local function read(path) -- "" when missing (u.slurp raises)
    local ok, body = pcall(u.slurp, path)
    return ok and body or ""
  end
  local md = read(dir .. "-s/table.md")
  t.ok(md:find("### 4. Depth use", 1, true) and md:find("| ULS s = 2 | 1,4 |", 1, true)
       and read(dir .. "-s/drop.svg"):find("<svg", 1, true),
       "examples/skip_study.lua --quick writes its table and plots")
  local _, notes = md:gsub("How the decode columns are computed: %*decode tok/s%* is 8 generated "
                           .. "tokens over the median of the variant's 1 raw times", "")
  t.is(notes, 2, "the study says under both decode tables how tok/s and speedup are computed")
  if not md:find("### 4", 1, true) then t.diag(sout) end
  os.execute("rm -rf " .. u.sh_quote(dir .. "-a") .. " " .. u.sh_quote(dir .. "-b") .. " "
             .. u.sh_quote(dir .. "-s"))
  os.remove(text)
end

t.done()

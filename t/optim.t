-- t/optim.t -- glia.optim and its kernels (ops/optim.c): each optimizer
-- against a plain-Lua reference over several steps, parameter groups,
-- gradient clipping, schedules, state_dict round trips through glia.save
-- (bit-identical resume), thread-count independence, errors, and
-- convergence on a small least-squares problem.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"
local optim = require "glia.optim"

local abs, sqrt, max, cos, pi = math.abs, math.sqrt, math.max, math.cos, math.pi
local flat = t.flat

u.seed(2024)

-- |got - want| <= rtol * max(|want|, 1) for every element: relative for
-- values above 1, absolute below.
local function close(got, want, rtol, desc)
  local g, w = flat(got, {}), flat(want, {})
  local worst = #g == #w and 0 or math.huge
  for i = 1, math.min(#g, #w) do
    local e = abs(g[i] - w[i]) / max(abs(w[i]), 1)
    if not (e <= worst) then worst = e end
  end
  if not t.ok(worst <= rtol, desc) then t.diag(string.format("worst error %g > %g", worst, rtol)) end
end

local function copy(list)
  local c = {}
  for i, v in ipairs(list) do c[i] = v end
  return c
end

-- Bitwise equality of two tensors of equal shape, without going to Lua.
local function same(a, b)
  return (a - b):abs():max():item() == 0
end

-- ========================================================= references

local function ref_sgd(p, grads, o)
  local wd, mu, damp = o.weight_decay or 0, o.momentum or 0, o.dampening or 0
  local buf
  for _, g in ipairs(grads) do
    local d = {}
    for i = 1, #p do d[i] = g[i] + wd * p[i] end
    if mu > 0 then
      if not buf then
        buf = copy(d)
      else
        for i = 1, #p do buf[i] = mu * buf[i] + (1 - damp) * d[i] end
      end
      for i = 1, #p do d[i] = o.nesterov and d[i] + mu * buf[i] or buf[i] end
    end
    for i = 1, #p do p[i] = p[i] - o.lr * d[i] end
  end
  return p
end

-- Adam (decoupled = false) or AdamW (true), with bias correction.
local function ref_adam(p, grads, o, decoupled)
  local b1, b2, eps, wd = o.betas[1], o.betas[2], o.eps, o.weight_decay
  local m, v = {}, {}
  for i = 1, #p do m[i], v[i] = 0, 0 end
  for step, g in ipairs(grads) do
    for i = 1, #p do
      local gi = g[i]
      if decoupled then p[i] = p[i] * (1 - o.lr * wd) else gi = gi + wd * p[i] end
      m[i] = b1 * m[i] + (1 - b1) * gi
      v[i] = b2 * v[i] + (1 - b2) * gi * gi
      local mh, vh = m[i] / (1 - b1 ^ step), v[i] / (1 - b2 ^ step)
      p[i] = p[i] - o.lr * mh / (sqrt(vh) + eps)
    end
  end
  return p
end

-- LAMB; also returns the trust ratio of the last step.
local function ref_lamb(p, grads, o)
  local b1, b2, eps, wd = o.betas[1], o.betas[2], o.eps, o.weight_decay
  local m, v, ratio = {}, {}, nil
  for i = 1, #p do m[i], v[i] = 0, 0 end
  for step, g in ipairs(grads) do
    local u, pn, un = {}, 0, 0
    for i = 1, #p do
      m[i] = b1 * m[i] + (1 - b1) * g[i]
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
      u[i] = m[i] / (1 - b1 ^ step) / (sqrt(v[i] / (1 - b2 ^ step)) + eps) + wd * p[i]
      pn, un = pn + p[i] * p[i], un + u[i] * u[i]
    end
    pn, un = sqrt(pn), sqrt(un)
    ratio = (pn > 0 and un > 0) and pn / un or 1
    for i = 1, #p do p[i] = p[i] - o.lr * ratio * u[i] end
  end
  return p, ratio
end

-- Runs `steps` steps of optim[kind](opts) on a {3,4} parameter with the
-- given gradients set by hand; returns the parameter and the optimizer.
local function run(kind, opts, p0, grads)
  local p = p0:clone():requires_grad()
  local opt = optim[kind]({ p }, opts)
  for _, g in ipairs(grads) do
    p.grad = g
    opt:step()
  end
  return p, opt
end

local p0 = glia.randn(3, 4)
local grads, gvals = {}, {}
for k = 1, 5 do
  grads[k] = glia.randn(3, 4)
  gvals[k] = flat(grads[k], {})
end
local pvals = flat(p0, {})
local RTOL = 1e-6

-- ============================================================== SGD

local sgd_cases = {
  { "plain SGD", { lr = 0.1 } },
  { "SGD with weight decay", { lr = 0.1, weight_decay = 0.05 } },
  { "SGD with momentum and dampening", { lr = 0.1, momentum = 0.9, dampening = 0.2 } },
  { "SGD with Nesterov momentum and weight decay",
    { lr = 0.05, momentum = 0.8, nesterov = true, weight_decay = 0.01 } },
}
for _, case in ipairs(sgd_cases) do
  local p = run("SGD", case[2], p0, grads)
  close(p, ref_sgd(copy(pvals), gvals, case[2]), RTOL,
        case[1] .. " matches the reference over 5 steps")
end

-- ============================================================= Adam

local adam_opts = { lr = 0.01, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0 }
local p1 = run("Adam", adam_opts, p0, { grads[1] })
local moved = flat(p1 - p0, {})
local all_lr = true
for i, d in ipairs(moved) do
  if abs(abs(d) - 0.01) > 1e-6 or (d > 0) == (gvals[1][i] > 0) then all_lr = false end
end
t.ok(all_lr, "Adam's bias-corrected first step moves every element by lr against its gradient")

local p = run("Adam", adam_opts, p0, grads)
close(p, ref_adam(copy(pvals), gvals, adam_opts, false), RTOL,
      "Adam matches the reference over 5 steps")
local adam_wd = { lr = 0.01, betas = { 0.8, 0.99 }, eps = 1e-6, weight_decay = 0.1 }
p = run("Adam", adam_wd, p0, grads)
close(p, ref_adam(copy(pvals), gvals, adam_wd, false), RTOL,
      "Adam with weight decay adds it to the gradient, as the reference does")
local pw = run("AdamW", adam_wd, p0, grads)
close(pw, ref_adam(copy(pvals), gvals, adam_wd, true), RTOL,
      "AdamW decouples weight decay (shrinks p by 1 - lr wd), as the reference does")
t.ok(not same(p, pw), "Adam and AdamW differ when weight decay is on")
local adamw_default = run("AdamW", { lr = 0.01 }, p0, grads)
close(adamw_default, ref_adam(copy(pvals), gvals,
      { lr = 0.01, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01 }, true), RTOL,
      "AdamW's defaults are betas {0.9, 0.999}, eps 1e-8, weight_decay 0.01")

-- ============================================================= LAMB

local lamb_opts = { lr = 0.02, betas = { 0.9, 0.999 }, eps = 1e-6, weight_decay = 0.01 }
local pl, opt_l = run("LAMB", lamb_opts, p0, grads)
local want_l, want_ratio = ref_lamb(copy(pvals), gvals, lamb_opts)
close(pl, want_l, RTOL, "LAMB matches the reference over 5 steps")
t.ok(abs(opt_l.state[1][1].trust_ratio - want_ratio) <= 1e-5 * want_ratio,
     "LAMB's trust ratio ||p|| / ||update|| matches the reference")

local zero_p = run("LAMB", lamb_opts, glia.zeros(3, 4), { grads[1] })
close(zero_p, ref_lamb(flat(glia.zeros(3, 4), {}), { gvals[1] }, lamb_opts), RTOL,
      "LAMB uses a trust ratio of 1 when the parameter norm is 0")
local _, opt_z = run("LAMB", lamb_opts, glia.zeros(3, 4), { grads[1] })
t.is(opt_z.state[1][1].trust_ratio, 1, "LAMB reports ratio 1 for a zero parameter")
local still, opt_s = run("LAMB", { lr = 0.1, weight_decay = 0 }, p0, { glia.zeros(3, 4) })
t.ok(same(still, p0) and opt_s.state[1][1].trust_ratio == 1,
     "LAMB with a zero update (zero gradient, no decay) keeps p and uses ratio 1")

-- ============================================================ groups

do
  local a, b, c = p0:clone(), glia.randn(5), glia.randn(2, 2)
  local av, bv, c0 = flat(a, {}), flat(b, {}), c:clone()
  local ga, gb = glia.randn(3, 4), glia.randn(5)
  local opt = optim.SGD({ { params = { a }, lr = 0.1 },
                          { params = { b, c }, lr = 0.01, momentum = 0.5 } }, { lr = 1 })
  for _ = 1, 3 do
    a.grad, b.grad = ga, gb
    opt:step()
  end
  local ga3, gb3 = {}, {}
  for k = 1, 3 do ga3[k], gb3[k] = flat(ga, {}), flat(gb, {}) end
  close(a, ref_sgd(av, ga3, { lr = 0.1 }), RTOL, "group 1 steps with its own lr")
  close(b, ref_sgd(bv, gb3, { lr = 0.01, momentum = 0.5 }), RTOL,
        "group 2 steps with its own lr and momentum")
  t.ok(opt.state[2][2].step == 0 and same(c, c0),
       "a parameter without a gradient is skipped and keeps step 0")
  t.ok(opt:get_lr(1) == 0.1 and opt:get_lr(2) == 0.01, "get_lr reads each group's lr")
  opt:set_lr(0.5, 2)
  t.ok(opt:get_lr(1) == 0.1 and opt:get_lr(2) == 0.5, "set_lr(lr, g) changes group g only")
  opt:set_lr(0.25)
  t.ok(opt:get_lr(1) == 0.25 and opt:get_lr(2) == 0.25, "set_lr(lr) changes every group")
  opt:zero_grad()
  t.ok(a.grad == nil and b.grad == nil, "zero_grad drops the gradients")
end

do -- a gradient of any layout gives the same update as a contiguous one
  local g = glia.randn(4, 3)
  local a = run("Adam", adam_opts, p0, { g:t() })
  local b = run("Adam", adam_opts, p0, { g:t():contiguous() })
  t.ok(same(a, b), "a transposed gradient updates like its contiguous copy")
end

do -- 0-size parameters
  local e = glia.zeros(0, 3)
  local opt = optim.AdamW({ e })
  e.grad = glia.zeros(0, 3)
  opt:step()
  t.is(opt.state[1][1].step, 1, "a 0-size parameter steps without error")
end

-- ========================================================== clipping

do
  local a, b = glia.randn(3, 4):requires_grad(), glia.randn(7):requires_grad()
  local ga, gb = glia.randn(3, 4), glia.randn(7)
  local ss = 0
  for _, v in ipairs(flat(ga, {})) do ss = ss + v * v end
  for _, v in ipairs(flat(gb, {})) do ss = ss + v * v end
  local want = sqrt(ss)
  a.grad, b.grad = ga:clone(), gb:clone()
  local norm = optim.clip_grad_norm({ a, b }, 0.5)
  t.ok(abs(norm - want) <= 1e-6 * want, "clip_grad_norm returns the global norm before clipping")
  local coef = 0.5 / (want + 1e-6)
  close(a.grad, flat(ga * coef, {}), RTOL, "clip_grad_norm scales the first gradient by max_norm / norm")
  close(b.grad, flat(gb * coef, {}), RTOL, "clip_grad_norm scales the second gradient by the same factor")
  local after = sqrt(glia.sum_sq({ a.grad, b.grad }))
  t.ok(abs(after - 0.5) < 1e-5, "after clipping the global norm is max_norm")
  a.grad, b.grad = ga:clone(), gb:clone()
  local n2 = optim.clip_grad_norm({ a, b }, want * 2)
  t.ok(n2 == norm and same(a.grad, ga) and same(b.grad, gb),
       "gradients under max_norm are left unchanged")
  a.grad = ga:clone()
  b:zero_grad()
  local n3 = optim.clip_grad_norm({ a, b, a }, 1e9)
  local sa = 0
  for _, v in ipairs(flat(ga, {})) do sa = sa + v * v end
  t.ok(abs(n3 - sqrt(sa)) <= 1e-6 * sqrt(sa),
       "parameters without gradients are skipped, and a repeated parameter counts once")
  local opt = optim.SGD({ { params = { a } }, { params = { b } } })
  b.grad = gb:clone()
  t.ok(abs(optim.clip_grad_norm(opt, 1e9) - want) <= 1e-6 * want,
       "clip_grad_norm accepts an optimizer and uses all its groups")
  t.is(optim.clip_grad_norm({}, 1), 0, "an empty list has norm 0")
  t.error_like(function() optim.clip_grad_norm({ a }, 0) end, "max_norm must be a number > 0",
               "clip_grad_norm rejects max_norm 0")
end

do -- sum_sq and scale_ directly
  local x = glia.randn(5, 6)
  local xs, ss = x:t(), 0
  for _, v in ipairs(flat(x, {})) do ss = ss + v * v end
  t.ok(abs(glia.sum_sq({ xs, x:narrow(2, 1, 0) }) - ss) <= 1e-12 * ss,
       "sum_sq sums in double over strided and empty tensors")
  local y = x:clone()
  glia.scale_({ y:t() }, 3)
  t.ok(same(y, x * 3), "scale_ multiplies a strided tensor in place")
  t.error_like(function() glia.sum_sq({ x, glia.zeros(2, "i64") }) end,
               "glia.sum_sq: element 2 must be f32", "sum_sq rejects a non-f32 element by position")
  t.error_like(function() glia.scale_({ glia.zeros(1):expand(4) }, 2) end,
               "glia.scale_: element 1 is expanded", "scale_ refuses an expanded tensor")
end

-- ========================================================== schedules

do
  local s = optim.schedule
  t.is(s.constant(0.3)(1) + s.constant(0.3)(1000), 0.6, "constant returns lr at every step")
  local st = s.step(0.1, 10, 0.5)
  t.ok(st(1) == 0.1 and st(10) == 0.1 and st(11) == 0.05 and st(21) == 0.025,
       "step multiplies lr by gamma after every step_size steps")
  local c = s.cosine { lr = 1, warmup = 10, total = 110, min_lr = 0.1 }
  t.ok(c(1) == 0.1 and c(5) == 0.5 and c(10) == 1, "cosine warms up linearly to lr")
  t.ok(abs(c(60) - 0.55) < 1e-12, "cosine is halfway between lr and min_lr halfway through")
  local want = 0.1 + 0.9 * 0.5 * (1 + cos(pi * 25 / 100))
  t.ok(abs(c(35) - want) < 1e-12, "cosine follows the half cosine after the warm-up")
  t.ok(c(110) == 0.1 and c(500) == 0.1, "cosine stays at min_lr from total on")
  t.is(s.cosine { lr = 2, total = 4 }(0), 2, "cosine without warm-up starts at lr")
  t.error_like(function() s.cosine { lr = 1, total = 10, warmpu = 2 } end, "unknown option 'warmpu'",
               "cosine names an unknown option")
  t.error_like(function() s.step(0.1, 0, 0.5) end, "step_size must be a number > 0",
               "step rejects step_size 0")
end

-- ========================================================== state_dict

-- A least-squares problem whose gradients come from autograd.
local X, Y = glia.randn(16, 5), glia.randn(16, 3)
local W0, B0 = glia.randn(5, 3), glia.randn(3)
local function train(opt, w, b, steps)
  for _ = 1, steps do
    opt:zero_grad()
    local loss = ((X:matmul(w) + b - Y) ^ 2):mean()
    loss:backward()
    opt:step()
  end
end

local dir = os.getenv("TMPDIR") or "/tmp"
local path = string.format("%s/glia-optim-%d.safetensors", dir, math.random(1, 1e9))
local kinds = {
  { "SGD", { lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 1e-3 } },
  { "Adam", { lr = 0.01, weight_decay = 1e-3 } },
  { "AdamW", { lr = 0.01, betas = { 0.8, 0.95 } } },
  { "LAMB", { lr = 0.01, weight_decay = 0.01 } },
}
for _, kind in ipairs(kinds) do
  local name, opts = kind[1], kind[2]
  local groups = function(w, b) return { { params = { w } }, { params = { b }, lr = opts.lr / 2 } } end
  local w1, b1 = W0:clone():requires_grad(), B0:clone():requires_grad()
  train(optim[name](groups(w1, b1), opts), w1, b1, 8)

  local w2, b2 = W0:clone():requires_grad(), B0:clone():requires_grad()
  local opt2 = optim[name](groups(w2, b2), opts)
  train(opt2, w2, b2, 3)
  local tensors, meta = opt2:state_dict()
  tensors.w, tensors.b = w2, b2
  meta.note = "model and optimizer in one file"
  assert(glia.save(path, tensors, meta))
  local lt, lm = glia.load(path)
  local w3, b3 = lt.w:clone():requires_grad(), lt.b:clone():requires_grad()
  -- different hyper-parameters on purpose: loading restores the saved ones
  local opt3 = optim[name](groups(w3, b3), { lr = 123 })
  opt3:load_state_dict(lt, lm)
  train(opt3, w3, b3, 5)
  t.ok(same(w1, w3) and same(b1, b3),
       name .. ": 8 steps equal 3 steps, save, load into a fresh optimizer, 5 steps, bitwise")
end

do
  local w = W0:clone():requires_grad()
  local opt = optim.Adam({ w }, { lr = 0.01 })
  train(opt, w, B0, 2)
  local tensors, meta = opt:state_dict()
  t.ok(meta["opt.type"] == "Adam" and meta["opt.1.1.step"] == "2" and meta["opt.1.lr"] == "0.01"
       and meta["opt.1.betas"] == "0.90000000000000002,0.999" and meta["opt.groups"] == "1",
       "state_dict metadata holds the type, step counts and exact hyper-parameters")
  t.ok(tensors["opt.1.1.exp_avg"] and tensors["opt.1.1.exp_avg_sq"],
       "state_dict names tensors opt.<group>.<index>.<name>")
  local ct, cm = opt:state_dict("enc")
  t.ok(ct["enc.1.1.exp_avg"] and cm["enc.type"] == "Adam", "state_dict takes a key prefix")

  local function load_err(tens, mt, pattern, desc)
    local fresh = optim.Adam({ W0:clone() })
    t.error_like(function() fresh:load_state_dict(tens, mt) end, pattern, desc)
  end
  local function without(tbl, key)
    local c = {}
    for k, v in pairs(tbl) do if k ~= key then c[k] = v end end
    return c
  end
  local function with(tbl, key, v)
    local c = without(tbl, key)
    c[key] = v
    return c
  end
  load_err(tensors, with(meta, "opt.type", "SGD"), "'opt.type' is SGD, not Adam",
           "loading another optimizer's state names the type")
  load_err(tensors, without(meta, "opt.1.1.step"), "missing metadata 'opt.1.1.step'",
           "a missing step count is named")
  load_err(with(tensors, "opt.1.1.exp_avg", glia.zeros(2)), meta,
           "'opt.1.1.exp_avg' has shape {2}, but the parameter has {5,3}",
           "a state tensor of the wrong shape is named with both shapes")
  load_err(with(tensors, "opt.1.2.exp_avg", glia.zeros(2)), meta, "unexpected key 'opt.1.2.exp_avg'",
           "an unexpected key is named")
  load_err(tensors, with(meta, "opt.1.betas", "0.9"), "'opt.1.betas' holds a bad value",
           "a malformed hyper-parameter is named")
  local errs = select(2, pcall(function()
    optim.Adam({ W0:clone() }):load_state_dict(tensors, with(without(meta, "opt.1.lr"), "opt.2.x", "1"))
  end))
  t.ok(tostring(errs):find("opt.1.lr", 1, true) and tostring(errs):find("opt.2.x", 1, true),
       "every offending key is named in one error")
  local fresh = optim.Adam({ W0:clone() }, { lr = 0.5 })
  pcall(fresh.load_state_dict, fresh, tensors, with(meta, "opt.type", "SGD"))
  t.ok(fresh:get_lr() == 0.5 and fresh.state[1][1].step == 0, "a failed load changes nothing")
  local loaded = optim.Adam({ W0:clone() })
  loaded:load_state_dict(tensors, meta)
  t.ok(loaded.state[1][1].exp_avg ~= tensors["opt.1.1.exp_avg"] and
       same(loaded.state[1][1].exp_avg, tensors["opt.1.1.exp_avg"]),
       "load_state_dict copies the state tensors in")
end
os.remove(path)

-- ============================================================ threads

do
  local n = 3 * 65536 + 17 -- several chunks and a ragged end
  local big0, bg = glia.randn(n), glia.randn(n)
  local r = u.by_threads(function()
    local out = {}
    for _, kind in ipairs(kinds) do
      local p = big0:clone()
      local opt = optim[kind[1]]({ p }, kind[2])
      for _ = 1, 3 do
        p.grad = bg
        opt:step()
      end
      out[#out + 1] = p
    end
    out.sum = glia.sum_sq({ big0, bg })
    return out
  end)
  local r1, r2 = r[1], r[2]
  for i, kind in ipairs(kinds) do
    t.ok(same(r1[i], r2[i]), kind[1] .. " gives identical results on 1 and 2 threads")
  end
  t.ok(r1.sum == r2.sum, "sum_sq gives the identical sum on 1 and 2 threads")
  local ss = 0
  for _, v in ipairs(flat(big0, {})) do ss = ss + v * v end
  for _, v in ipairs(flat(bg, {})) do ss = ss + v * v end
  t.ok(abs(r1.sum - ss) <= 1e-12 * ss, "sum_sq of many chunks matches a plain double sum")
end

-- ============================================================ autograd

do
  local p = glia.randn(3):requires_grad()
  local y = (p * p):sum()
  p.grad = glia.ones(3)
  optim.SGD({ p }, { lr = 0.1 }):step()
  t.error_like(function() y:backward() end, "modified in place",
               "a step bumps the parameter's version: a graph that saved it refuses backward")
  p:zero_grad()
  local z = (p * 2):sum()
  z:backward()
  t.ok(p.grad ~= nil and same(p.grad, glia.full({ 3 }, 2)),
       "after a step the parameter is still a leaf that collects gradients")
end

-- ============================================================== errors

do
  local good = glia.zeros(3)
  t.error_like(function() optim.SGD({ glia.zeros(3, "f64") }) end,
               "glia.optim.SGD: parameter 1 of group 1 must be a contiguous f32 tensor, got f64",
               "a non-f32 parameter is refused with its position")
  t.error_like(function() optim.Adam({ good, glia.zeros(3, 4):t() }) end,
               "parameter 2 of group 1 must be a contiguous f32 tensor, got non%-contiguous f32 {4,3}",
               "a non-contiguous parameter is refused with its position")
  t.error_like(function() optim.SGD({ good }, { lr = -0.1 }) end, "glia.optim.SGD: lr must be a number >= 0, got %-0.1",
               "a negative lr is refused")
  t.error_like(function() optim.SGD({ good }):set_lr(-1) end, "lr must be a number >= 0, got %-1",
               "set_lr refuses a negative lr")
  t.error_like(function() optim.AdamW({ good }, { lr = 0.1, weight_decya = 0.1 }) end,
               "glia.optim.AdamW: unknown option 'weight_decya'", "an unknown option is named")
  t.error_like(function() optim.Adam({ { params = { good }, mometum = 0.9 } }) end,
               "glia.optim.Adam: group 1: unknown option 'mometum'", "an unknown group option is named")
  t.error_like(function() optim.Adam({ good }, { betas = { 0.9, 1 } }) end,
               "betas must be a table {beta1, beta2} of numbers in %[0, 1%)", "betas of 1 are refused")
  t.error_like(function() optim.SGD({ good }, { nesterov = true }) end,
               "nesterov needs momentum > 0 and dampening 0", "Nesterov without momentum is refused")
  t.error_like(function() optim.SGD({ good, good }) end, "parameter 2 of group 1 appears twice",
               "a repeated parameter is refused")
  t.error_like(function() optim.LAMB({}) end, "non%-empty list", "an empty parameter list is refused")

  local p, g, m, v = glia.zeros(2, 3), glia.zeros(2, 3), glia.zeros(2, 3), glia.zeros(2, 3)
  t.error_like(function() glia.adam_step_(glia.zeros(3, 2):t(), g, m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0, true) end,
               "glia.adam_step_: parameter must be contiguous, got a strided {2,3}",
               "adam_step_ refuses a strided parameter")
  t.error_like(function() glia.adam_step_(p, glia.zeros(3, 2), m, v, 1, 0.1, 0.9, 0.999, 1e-8, 0, true) end,
               "glia.adam_step_: gradient {3,2} does not match the parameter {2,3}",
               "adam_step_ refuses a gradient of another shape")
  t.error_like(function() glia.lamb_step_(p, g, glia.zeros(2, 3, "f64"), v, 1, 0.1, 0.9, 0.999, 1e-8, 0) end,
               "glia.lamb_step_: exp_avg must be f32, got f64 {2,3}", "lamb_step_ refuses an f64 moment")
  t.error_like(function() glia.adam_step_(p, g, m, m, 1, 0.1, 0.9, 0.999, 1e-8, 0, true) end,
               "exp_avg and exp_avg_sq share storage", "adam_step_ refuses aliased moments")
  t.error_like(function() glia.adam_step_(p, g, m, v, 0, 0.1, 0.9, 0.999, 1e-8, 0, true) end,
               "step must be >= 1, got 0", "adam_step_ refuses step 0")
  t.error_like(function() glia.sgd_step_(p, g, nil, 1, 0.1, 0.9, 0, false, 0) end,
               "glia.sgd_step_: momentum 0.9 needs a momentum buffer", "sgd_step_ needs a buffer for momentum")
  t.error_like(function() glia.sgd_step_(p, g, nil, 1, 0 / 0, 0, 0, false, 0) end,
               "lr must be a finite number >= 0", "sgd_step_ refuses a NaN lr")
end

-- ========================================================= convergence

do -- a consistent least-squares problem: the optimum has loss 0
  local A = glia.randn(32, 6)
  local wstar = glia.randn(6)
  local b = A:matmul(wstar)
  local cases = {
    { "SGD", { lr = 0.05 }, 400 },
    { "SGD", { lr = 0.02, momentum = 0.9, nesterov = true }, 300 },
    { "Adam", { lr = 0.05 }, 400 },
    { "AdamW", { lr = 0.05, weight_decay = 0 }, 400 },
    { "LAMB", { lr = 0.05 }, 400 },
  }
  for _, c in ipairs(cases) do
    local w = glia.zeros(6):requires_grad()
    local opt = optim[c[1]]({ w }, c[2])
    local sched = optim.schedule.cosine { lr = c[2].lr, warmup = 10, total = c[3], min_lr = c[2].lr / 10 }
    local loss
    for step = 1, c[3] do
      opt:zero_grad()
      loss = ((A:matmul(w) - b) ^ 2):mean()
      loss:backward()
      optim.clip_grad_norm({ w }, 10)
      opt:set_lr(sched(step))
      opt:step()
    end
    local final = ((A:matmul(w) - b) ^ 2):mean():item()
    if not t.ok(final < 1e-3, c[1] .. (c[2].momentum and " with momentum" or "") ..
                " solves a small least-squares problem (loss below 1e-3)") then
      t.diag("final loss " .. final)
    end
  end
end

-- load_state_dict keeps nothing alive once the optimizer is dropped. Under
-- LuaJIT a trace recorded while a function has made fewer than three
-- closures may specialise to the closure at hand and keep it, with all it
-- captured (the optimizer, its parameters, the copies of the moments), as a
-- constant. Here every loop is hot at once, and glia.optim is loaded afresh
-- (new functions, no closures made yet) for each of 10 rounds of two loads,
-- the traces flushed between rounds: with the copy in a closure over the
-- optimizer, 384 bytes were kept in 6 to 9 rounds of 10. That is how
-- t/alloc_sweep.t's checkpoint.load sweep, whose first load to reach the
-- copy runs out of memory there, kept 960 bytes now and then.
do
  local nn = require "glia.nn"
  local function full_gc() collectgarbage() collectgarbage() end
  glia.manual_seed(5)
  local src = nn.Linear(4, 3)
  local src_opt = optim.AdamW(src:parameters())
  src(glia.randn(2, 4)):sum():backward()
  src_opt:step()
  local tensors, meta = src_opt:state_dict()
  if jit then jit.flush() end -- and what traces of the tests above may keep
  full_gc()
  local base = glia.memory().live
  local kept = {}
  if jit then jit.opt.start("hotloop=1") end
  for round = 1, 10 do
    package.loaded["glia.optim"] = nil
    local fresh_optim = require "glia.optim"
    for _ = 1, 2 do fresh_optim.AdamW(nn.Linear(4, 3):parameters()):load_state_dict(tensors, meta) end
    full_gc()
    local live = glia.memory().live
    if live ~= base then kept[#kept + 1] = string.format("round %d: %d bytes", round, live - base) end
    if jit then jit.flush() end -- the next round starts without traces
  end
  if jit then jit.opt.start("hotloop=56") end
  package.loaded["glia.optim"] = optim
  t.is(table.concat(kept, ", "), "", "load_state_dict keeps no dropped optimizer's tensors alive")
end

t.done()

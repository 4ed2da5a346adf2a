-- t/repbn.t -- SLAB's normalization: nn.RepBN (BatchNorm over the channels
-- of {..., C} plus the eta identity branch) against a plain-Lua reference in
-- training and eval, its running statistics and padding mask; nn.PRepBN at
-- lam = 1 (exactly LN / RMSNorm), lam = 0 (exactly RepBN) and in between,
-- its schedule over 20 steps, the nn.schedule_step hook, state dicts and
-- checkpoints that resume the schedule, gradient checks; nn.fold: every
-- pattern folds with outputs unchanged, and the errors.
--
-- Tolerances: f32 outputs against fp64 Lua references to 1e-5 (O(1)
-- values); "exactly" means to the bit (u.identical). Gradient checks come
-- twice: glia.gradcheck's central differences of the f32 module (eps 1e-3,
-- tolerances 1e-2, as t/norm.t does), and u.gradcheck_f64, central
-- differences in doubles of the plain-Lua references (glia computes in f32
-- only, so the f64 side is the reference) against autograd, to 1e-4.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"
local nn = require "glia.nn"
local checkpoint = require "glia.checkpoint"

local sqrt, max = math.sqrt, math.max
local unpack = table.unpack or unpack
local SEED = u.seed(4242)
local TOL = 1e-5

-- ================================================================ helpers

-- x {..., C} (a tensor or a nested table) as a list of rows (tables of C
-- numbers), in row-major order.
local function rows(x)
  local C
  if type(x) == "table" then
    local last = x
    while type(last[1]) == "table" do last = last[1] end
    C = #last
  else
    C = x:size(x:dim())
  end
  local flat, out = t.flat(x, {}), {}
  for i = 0, #flat / C - 1 do
    local r = {}
    for c = 1, C do r[c] = flat[i * C + c] end
    out[#out + 1] = r
  end
  return out
end

local function tolist(v)
  return type(v) == "table" and v or t.flat(v, {})
end

-- Per-channel mean and biased variance over the rows whose keep[i] is true
-- (all rows without keep), and their count.
local function stats(r, keep)
  local C, mean, var, n = #r[1], {}, {}, 0
  for c = 1, C do
    local s, k = 0, 0
    for i = 1, #r do if not keep or keep[i] then s, k = s + r[i][c], k + 1 end end
    mean[c] = s / k
    local ss = 0
    for i = 1, #r do if not keep or keep[i] then ss = ss + (r[i][c] - mean[c]) ^ 2 end end
    var[c], n = ss / k, k
  end
  return mean, var, n
end

-- RepBN's output rows: gamma (x - mean) / sqrt(var + eps) + beta + eta x,
-- and x itself on rows not kept.
local function repbn_ref(r, mean, var, w, b, eta, eps, keep)
  local out = {}
  for i = 1, #r do
    local o = {}
    for c = 1, #r[i] do
      if keep and not keep[i] then
        o[c] = r[i][c]
      else
        o[c] = w[c] * (r[i][c] - mean[c]) / sqrt(var[c] + eps) + b[c] + eta * r[i][c]
      end
    end
    out[i] = o
  end
  return out
end

-- LayerNorm of each row (rms: RMSNorm without centering or bias).
local function ln_ref(r, w, b, eps, rms)
  local out = {}
  for i = 1, #r do
    local C, m, v = #r[i], 0, 0
    if not rms then
      for c = 1, C do m = m + r[i][c] end
      m = m / C
    end
    for c = 1, C do v = v + (r[i][c] - m) ^ 2 end
    v = v / C
    local o = {}
    for c = 1, C do o[c] = w[c] * (r[i][c] - m) / sqrt(v + eps) + (b and b[c] or 0) end
    out[i] = o
  end
  return out
end

local function mix(a, b, lam)
  local out = {}
  for i = 1, #a do
    out[i] = {}
    for c = 1, #a[i] do out[i][c] = lam * a[i][c] + (1 - lam) * b[i][c] end
  end
  return out
end

local function randomize(m)
  glia.no_grad(function()
    for _, p in ipairs(m:parameters()) do p:copy_(glia.randn(p:shape()):mul(0.5):add(1)) end
  end)
  return m
end

-- ================================================================= RepBN

local C = 4
local rep = randomize(nn.RepBN(C))
local w, b, eta = tolist(rep.bn.weight), tolist(rep.bn.bias), rep.eta:item()
t.is(table.concat((function()
  local out = {}
  for i, e in ipairs(rep:named_parameters()) do out[i] = e[1] end
  for _, e in ipairs(rep:named_buffers()) do out[#out + 1] = e[1] end
  return out
end)(), " "), "eta bn.weight bn.bias bn.running_mean bn.running_var bn.num_batches_tracked",
     "RepBN holds eta and a BatchNorm1d child's parameters and running statistics")
t.is(nn.RepBN(3).eta:item(), 1, "RepBN's eta starts at 1")
t.is(nn.RepBN(3, { eta = 0 }).eta:item(), 0, "RepBN's eta starts at opts.eta")

local rm, rv = { 0, 0, 0, 0 }, { 1, 1, 1, 1 }
for step = 1, 2 do
  local x = glia.randn(2, 5, C):mul(step):add(step)
  local r = rows(x)
  local mean, var, n = stats(r)
  t.near(rep(x), repbn_ref(r, mean, var, w, b, eta, 1e-5), TOL,
         "RepBN in training normalizes each channel over all B*N tokens with the biased variance, plus eta x (step "
         .. step .. ")")
  for c = 1, C do
    rm[c] = 0.9 * rm[c] + 0.1 * mean[c]
    rv[c] = 0.9 * rv[c] + 0.1 * var[c] * n / (n - 1)
  end
end
t.near(rep.bn.running_mean, rm, TOL, "RepBN's running mean is 0.9 old + 0.1 batch mean")
t.near(rep.bn.running_var, rv, TOL, "RepBN's running variance takes the unbiased batch variance")
rep:eval()
local rm_before = rep.bn.running_mean:clone()
local xe = glia.randn(3, 2, C)
t.near(rep(xe), repbn_ref(rows(xe), rm, rv, w, b, eta, 1e-5), TOL,
       "RepBN in eval mode normalizes with the running statistics, plus eta x")
t.near(rep(xe:view(6, C)), repbn_ref(rows(xe), rm, rv, w, b, eta, 1e-5), TOL, "RepBN takes {M,C} too")
t.ok(u.identical(rep.bn.running_mean, rm_before), "RepBN in eval mode leaves the running statistics alone")
rep:train()

do -- a strided input: {N,B,C} transposed to {B,N,C}
  local xs = glia.randn(5, 2, C)
  local a = nn.RepBN(C)
  local bb = nn.RepBN(C)
  t.ok(u.identical(a(xs:transpose(1, 2)), bb(xs:transpose(1, 2):contiguous())),
       "RepBN on a transposed input equals RepBN on its contiguous copy")
  local xn = glia.randn(2, 5, 2 * C):narrow(3, 3, C)
  local r = rows(xn)
  local mean, var = stats(r)
  t.near(nn.RepBN(C)(xn), repbn_ref(r, mean, var, { 1, 1, 1, 1 }, { 0, 0, 0, 0 }, 1, 1e-5), TOL,
         "RepBN on a narrowed input matches the reference")
end

do -- eta = 0 is BatchNorm1d
  local a = randomize(nn.RepBN(C, { eta = 0 }))
  glia.no_grad(function() a.eta:zero_() end)
  local bn = nn.BatchNorm1d(C)
  bn:load_state_dict(a.bn:state_dict())
  local x = glia.randn(7, C)
  t.ok(u.identical(a(x), bn(x)), "RepBN with eta = 0 gives exactly BatchNorm1d's output")
  t.ok(u.identical(a.bn.running_var, bn.running_var), "RepBN with eta = 0 updates the running statistics as BatchNorm1d")
end

-- ============================================================== masking

do
  local m = randomize(nn.RepBN(C))
  local mw, mb, meta = tolist(m.bn.weight), tolist(m.bn.bias), m.eta:item()
  local x = glia.randn(2, 4, C)
  local mask = glia.tensor({ { true, true, true, false }, { true, true, false, false } }, "bool")
  local keep = t.flat(mask, {})
  local r = rows(x)
  local mean, var, n = stats(r, keep)
  local y = m(x, { mask = mask })
  t.near(y, repbn_ref(r, mean, var, mw, mb, meta, 1e-5, keep), TOL,
         "RepBN with a mask takes the statistics over the unmasked tokens only")
  t.ok(u.identical(y[{ 1, 4 }], x[{ 1, 4 }]) and u.identical(y[{ 2, { 3, 4 } }], x[{ 2, { 3, 4 } }]),
       "RepBN passes padded positions through unchanged")
  local want_rv = {}
  for c = 1, C do want_rv[c] = 0.9 + 0.1 * var[c] * n / (n - 1) end
  t.near(m.bn.running_var, want_rv, TOL, "RepBN's running variance counts the unmasked tokens only (n = 5)")

  local m2 = randomize(nn.RepBN(C))
  m2:load_state_dict(m:state_dict())
  glia.no_grad(function() m2.bn.running_mean:zero_() m2.bn.running_var:fill_(1) m2.bn.num_batches_tracked:zero_() end)
  local x2 = x:clone()
  glia.no_grad(function() x2[{ 1, 4 }] = 1000 x2[{ 2, 3 }] = -7 end)
  local y2 = m2(x2, { mask = mask:to("i64") })
  t.ok(u.identical(y2[{ 1, { 1, 3 } }], y[{ 1, { 1, 3 } }]) and u.identical(y2[{ 2, { 1, 2 } }], y[{ 2, { 1, 2 } }]),
       "changing padded values changes no unpadded output (mask given as 0/1 numbers)")
  t.ok(u.identical(m2.bn.running_mean, m.bn.running_mean) and u.identical(m2.bn.running_var, m.bn.running_var),
       "changing padded values changes no running statistic")

  m:eval()
  local ye = m(x, { mask = mask })
  t.ok(u.identical(ye, m(x)), "RepBN in eval mode ignores the mask: the running statistics normalize every position")
  m:train()
  t.error_like(function() m(x, { mask = glia.ones(2, 3, "bool") }) end,
               "RepBN: mask must have the input's shape without the channel dim, {2,4} for input {2,4,4}, got {2,3}",
               "a mask of the wrong shape is an error naming both shapes")
  t.error_like(function() m(x, { mask = glia.tensor({ { true, false, false, false }, { false, false, false, false } }, "bool") }) end,
               "RepBN: training needs more than one value per channel, got {8,4} with 1 unmasked",
               "a mask leaving one token is an error")
  t.error_like(function() m(x, { maks = mask }) end, "unknown option 'maks'", "RepBN:forward checks its options")
end

t.error_like(function() nn.RepBN(C)(glia.randn(3, 5)) end,
             "^t/repbn.t:%d+: glia.nn.RepBN: expected input {%.%.%., 4} %(channels last, at least 2%-D%), got {3,5}",
             "RepBN names the expected and the given shape")
t.error_like(function() nn.RepBN(C)(glia.randn(4)) end, "got {4}", "RepBN rejects a 1-D input")
t.error_like(function() nn.RepBN(0) end, "RepBN: num_features must be an integer >= 1, got 0", "RepBN checks C")
t.error_like(function() nn.RepBN(4, { momentum = 0.1, etta = 1 }) end, "unknown option 'etta'", "RepBN checks its options")

-- ================================================================ PRepBN

-- A RepBN and a LayerNorm (or RMSNorm) loaded with p's, for references.
local function parts(p)
  local ln = p.norm == "layer" and nn.LayerNorm(p.num_features) or nn.RMSNorm(p.num_features)
  ln:load_state_dict(p.ln:state_dict())
  local rb = nn.RepBN(p.num_features)
  rb:load_state_dict(p.repbn:state_dict())
  return ln, rb
end

for _, kind in ipairs { "layer", "rms" } do
  local LN = kind == "layer" and "LN" or "RMSNorm"
  local p = randomize(nn.PRepBN(C, { steps = 10, norm = kind }))
  t.is(p:lam(), 1, "PRepBN(" .. kind .. ") starts at lam = 1 without warm-up")
  local ln, rb = parts(p)
  local x = glia.randn(2, 3, C)
  local x1, x2 = x:clone(), x:clone()
  local y = p(x1:requires_grad())
  local yl = ln(x2:requires_grad())
  t.ok(u.identical(y, yl), "PRepBN(" .. kind .. ") at lam = 1 gives exactly " .. LN .. "'s output")
  local g = glia.randn(2, 3, C)
  y:backward(g)
  yl:backward(g)
  t.ok(u.identical(x1.grad, x2.grad) and u.identical(p.ln.weight.grad, ln.weight.grad),
       "PRepBN(" .. kind .. ") at lam = 1 gives exactly " .. LN .. "'s gradients")
  t.ok(u.identical(p.repbn.bn.running_mean, rb(x:clone()) and rb.bn.running_mean),
       "PRepBN(" .. kind .. ") at lam = 1 (after warm-up) updates the RepBN's running statistics")

  for _ = 1, 10 do p:schedule_step() end
  p:zero_grad()
  t.is(p:lam(), 0, "PRepBN(" .. kind .. ") reaches lam = 0 after `steps` steps")
  ln, rb = parts(p)
  x1, x2 = x:clone(), x:clone()
  y = p(x1:requires_grad())
  local yr = rb(x2:requires_grad())
  t.ok(u.identical(y, yr), "PRepBN(" .. kind .. ") at lam = 0 gives exactly RepBN's output")
  y:backward(g)
  yr:backward(g)
  t.ok(u.identical(x1.grad, x2.grad) and u.identical(p.repbn.eta.grad, rb.eta.grad)
       and u.identical(p.repbn.bn.weight.grad, rb.bn.weight.grad),
       "PRepBN(" .. kind .. ") at lam = 0 gives exactly RepBN's gradients")
  t.ok(p.ln.weight.grad == nil or u.identical(p.ln.weight.grad, glia.zeros(C)),
       "PRepBN(" .. kind .. ") at lam = 0 skips the " .. LN)
end

do -- in between: the mix formula, against references
  local p = randomize(nn.PRepBN(C, { steps = 4, eps = 1e-6 }))
  p:schedule_step()
  t.is(p:lam(), 0.75, "one step into a 4-step schedule lam is 0.75")
  local lw, lb = tolist(p.ln.weight), tolist(p.ln.bias)
  local bw, bb, e = tolist(p.repbn.bn.weight), tolist(p.repbn.bn.bias), p.repbn.eta:item()
  local x = glia.randn(3, 2, C)
  local r = rows(x)
  local mean, var = stats(r)
  t.near(p(x), mix(ln_ref(r, lw, lb, 1e-6), repbn_ref(r, mean, var, bw, bb, e, 1e-5), 0.75), TOL,
         "PRepBN at lam = 0.75 is 0.75 LN(x) + 0.25 RepBN(x) (LN eps from opts.eps)")
end

do -- the schedule over 20 steps: warm-up 3, decay 10
  local p = randomize(nn.PRepBN(C, { warmup = 3, steps = 10 }))
  local want = { 1, 1, 1, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0 }
  local lams_ok, out_ok, eval_ok, warm_ok = true, true, true, true
  for s = 1, 20 do
    local lam = p:lam()
    if math.abs(lam - want[s]) > 1e-7 or p:in_warmup() ~= (s <= 3) then
      lams_ok = false
      t.diag(("step %d: lam %s, warm-up %s"):format(s, lam, tostring(p:in_warmup())))
    end
    local x = glia.randn(2, 3, C):mul(s % 3 + 1)
    local ln, rb = parts(p)
    local rm0 = p.repbn.bn.running_mean:clone()
    local y = p(x)
    local yl, yr = ln(x), rb(x)
    local ref = s <= 3 and yl or yl * want[s] + yr * (1 - want[s])
    if s <= 3 then
      warm_ok = warm_ok and u.identical(p.repbn.bn.running_mean, rm0)
      out_ok = out_ok and u.identical(y, yl)
    else
      out_ok = out_ok and t.maxdiff(y, ref) <= 1e-6
    end
    p:eval()
    rb:load_state_dict(p.repbn:state_dict())
    rb:eval()
    eval_ok = eval_ok and u.identical(p(x), rb(x))
    p:train()
    t.is(nn.schedule_step(p), 1, "nn.schedule_step advances the one PRepBN (step " .. s .. ")")
  end
  t.ok(lams_ok, "lam over 20 steps with warm-up 3 and steps 10: 1 x3 (warm-up), then 1.0, 0.9, ..., 0.1, then 0")
  t.ok(out_ok, "outputs over 20 steps: LN during warm-up, then lam LN + (1 - lam) RepBN (to 1e-6)")
  t.ok(warm_ok, "the RepBN's running statistics do not move during warm-up")
  t.ok(eval_ok, "in eval mode PRepBN is its RepBN at every step, whatever lam")
end

do -- the hook walks a model
  local model = nn.Sequential(nn.PRepBN(C, { steps = 5 }), nn.Linear(C, C),
                              nn.Residual(nn.Sequential(nn.PRepBN(C, { steps = 5 }), nn.ReLU())))
  t.is(nn.schedule_step(model), 2, "nn.schedule_step(model) advances every PRepBN of the model and counts them")
  t.ok(model[1]:lam() == 0.8 and model[3].inner[1]:lam() == 0.8, "each PRepBN of the model moved one step")
end

-- ============================================================ state, checkpoints

do
  local p = randomize(nn.PRepBN(C, { warmup = 1, steps = 8 }))
  for _ = 1, 4 do p(glia.randn(3, C)) p:schedule_step() end
  local sd = p:state_dict()
  t.ok(sd.step ~= nil and sd.step:item() == 4 and sd.step:dtype() == "i64",
       "PRepBN's state dict holds its schedule step (an i64 buffer)")
  local q = nn.PRepBN(C, { warmup = 1, steps = 8 })
  q:load_state_dict(sd)
  local x = glia.randn(2, 3, C)
  t.ok(q:lam() == p:lam() and q:lam() == 5 / 8, "loading the state dict resumes the schedule (lam 5/8)")
  t.ok(u.identical(q(x), p(x)), "a PRepBN loaded from the state dict computes what the original does")

  local dir = os.tmpname()
  os.remove(dir)
  assert(checkpoint.make_dir(dir))
  local model = nn.Sequential(p, nn.Linear(C, 2))
  assert(checkpoint.save(dir, { model = model, step = 5 }))
  local fresh = nn.Sequential(nn.PRepBN(C, { warmup = 1, steps = 8 }), nn.Linear(C, 2))
  assert(checkpoint.load(dir, { model = fresh }))
  t.ok(fresh[1]:lam() == p:lam() and fresh[1].step:item() == 4,
       "a glia.checkpoint of the model carries the schedule step")
  os.remove(checkpoint.path(dir))
  os.remove(dir)
end

-- ======================================================= gradient checks

do
  local x = glia.randn(2, 3, C)
  local r = randomize(nn.RepBN(C))
  u.gradcheck(function(xx) return r(xx) end, { x, r.eta, r.bn.weight, r.bn.bias },
              "gradcheck passes for RepBN in training on x, eta, weight and bias")
  local mask = glia.tensor({ { true, true, false }, { true, false, true } }, "bool")
  u.gradcheck(function(xx) return r(xx, { mask = mask }) end, { x, r.eta, r.bn.weight },
              "gradcheck passes for RepBN with a padding mask")
  u.gradcheck(function(xx) return r(xx:transpose(1, 2)) end, { glia.randn(3, 2, C) },
              "gradcheck passes for RepBN on a transposed input")
  r:eval()
  u.gradcheck(function(xx) return r(xx) end, { x, r.eta, r.bn.weight, r.bn.bias },
              "gradcheck passes for RepBN in eval mode")
  for _, kind in ipairs { "layer", "rms" } do
    local p = randomize(nn.PRepBN(C, { steps = 4, norm = kind }))
    for s = 0, 4 do
      local inputs = { x, p.ln.weight, p.repbn.eta, p.repbn.bn.weight, p.repbn.bn.bias }
      if p.ln.bias then inputs[#inputs + 1] = p.ln.bias end
      u.gradcheck(function(xx) return p(xx) end, inputs,
                  ("gradcheck passes for PRepBN(%s) at lam = %g"):format(kind, p:lam()))
      p:schedule_step()
    end
  end
end

-- f64 gradient checks: autograd against central differences in doubles of
-- repbn_ref / ln_ref / mix over the rows of the input, for x and every
-- parameter. In training the statistics are functions of x (their
-- gradient paths are checked too); in eval they are the running ones.
do
  local function bn_train(xx, e, w, b, keep)
    local r = rows(xx)
    local mean, var = stats(r, keep)
    return repbn_ref(r, mean, var, w, b, e[1], 1e-5, keep)
  end
  local r = randomize(nn.RepBN(C))
  local params = { r.eta, r.bn.weight, r.bn.bias }
  local function check(desc, x, fn, ref)
    u.gradcheck_f64(fn, ref, { x, unpack(params) }, desc)
  end
  check("f64 gradcheck of RepBN in training on x, eta, weight and bias", glia.randn(2, 3, C),
        function(xx) return r(xx) end, bn_train)
  check("f64 gradcheck of RepBN in training on a transposed input", glia.randn(3, 2, C):transpose(1, 2),
        function(xx) return r(xx) end, bn_train)
  local mask = glia.tensor({ { true, true, false }, { true, false, true } }, "bool")
  local keep = t.flat(mask, {})
  check("f64 gradcheck of RepBN with a padding mask (statistics over kept tokens, padded ones pass through)",
        glia.randn(2, 3, C), function(xx) return r(xx, { mask = mask }) end,
        function(xx, e, w, b) return bn_train(xx, e, w, b, keep) end)
  r:eval()
  local rm, rv = r.bn.running_mean:totable(), r.bn.running_var:totable()
  check("f64 gradcheck of RepBN in eval mode (running statistics) on x, eta, weight and bias",
        glia.randn(2, 3, C), function(xx) return r(xx) end,
        function(xx, e, w, b) return repbn_ref(rows(xx), rm, rv, w, b, e[1], 1e-5) end)

  for _, kind in ipairs { "layer", "rms" } do
    local p = randomize(nn.PRepBN(C, { steps = 2, norm = kind }))
    local eps = p.ln.eps
    for _ = 0, 2 do
      local lam = p:lam()
      local inputs = { glia.randn(2, 3, C), p.ln.weight, p.repbn.eta, p.repbn.bn.weight, p.repbn.bn.bias }
      if p.ln.bias then inputs[#inputs + 1] = p.ln.bias end
      u.gradcheck_f64(function(xx) return p(xx) end, function(xx, lw, e, bw, bb, lb)
        return mix(ln_ref(rows(xx), lw, lb, eps, kind == "rms"), bn_train(xx, e, bw, bb), lam)
      end, inputs, ("f64 gradcheck of PRepBN(%s) at lam = %g on x and every parameter"):format(kind, lam))
      p:schedule_step()
    end
  end
end

-- ============================================================= options

t.error_like(function() nn.PRepBN(C, { steps = 2 })(glia.randn(2, 3, C + 1)) end,
             "^t/repbn.t:%d+: glia.nn.PRepBN: expected input {..., 4} %(channels last, at least 2%-D%), got {2,3,5}",
             "PRepBN names itself and both shapes for an input of the wrong channel count (not its LayerNorm)")
t.error_like(function() nn.PRepBN(C, { steps = -1 }) end, "PRepBN: steps must be an integer >= 0, got %-1",
             "a negative number of steps is an error")
t.error_like(function() nn.PRepBN(C, { warmup = -3 }) end, "PRepBN: warmup must be an integer >= 0, got %-3",
             "a negative warm-up is an error")
t.error_like(function() nn.PRepBN(C, { steps = 2.5 }) end, "PRepBN: steps must be an integer >= 0, got 2.5",
             "a fractional number of steps is an error")
t.error_like(function() nn.PRepBN(C, { norm = "batch" }) end, 'PRepBN: norm must be "layer" or "rms", got batch',
             "an unknown norm is an error")
t.error_like(function() nn.PRepBN(C, { step = 10 }) end, "unknown option 'step'", "PRepBN checks its options")
t.error_like(function() nn.PRepBN(C, { steps = -1 }) end, "^t/repbn.t:", "PRepBN's errors blame the caller")
t.is(nn.PRepBN(C, { steps = 0 }):lam(), 0, "steps = 0 hands over to RepBN at once")
t.ok(tostring(nn.PRepBN(C, { warmup = 2, steps = 7, norm = "rms" })):find("PRepBN(4, norm=rms, warmup=2, steps=7, step=0)", 1, true),
     "PRepBN prints its schedule")

-- ================================================================ folding

-- Mean over the tokens of {B,N,C}: an average, so fold crosses it.
local TokenMean = nn.Module:extend("TokenMean")
TokenMean.fold_transparent = true
function TokenMean:forward(x) return x:mean({ 2 }) end

-- A pre-norm block whose forward is code: one norm feeds q, k and v, the
-- other a SwiGLU's gate and up; fold_pairs says so.
local Block = nn.Module:extend("TestBlock")
function Block:__init(dim, norm)
  self.norm1 = norm(dim)
  self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim, { bias = false }), nn.Linear(dim, dim)
  self.proj = nn.Linear(dim, dim)
  self.norm2 = norm(dim)
  self.gate, self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
end
function Block:forward(x)
  local h = self.norm1(x)
  local q, k, v = self.q(h), self.k(h), self.v(h)
  x = x + self.proj(glia.softmax(q:matmul(k:transpose(2, 3)):div(sqrt(x:size(3))), 3):matmul(v))
  local n = self.norm2(x)
  return x + self.down(self.gate(n):silu() * self.up(n))
end
function Block:fold_pairs()
  return { { norm = "norm1", into = { "q", "k", "v" } }, { norm = "norm2", into = { "gate", "up" } } }
end

local NORM_CLASSES = { RepBN = true, PRepBN = true, BatchNorm1d = true, BatchNorm2d = true,
                       LayerNorm = true, RMSNorm = true }

local function has_norm(m)
  for _, e in ipairs(m:modules()) do
    if NORM_CLASSES[nn.Module.class_name(e)] then return true end
  end
  return false
end

-- Trains model's statistics for a few steps on inputs of shape, randomizes
-- the norms' parameters (eta and the affine away from their initial values), puts
-- it in eval mode, folds it, and checks the outputs agree to 1e-5.
local function check_fold(model, shape, desc)
  for _, m in ipairs(model:modules()) do
    if NORM_CLASSES[nn.Module.class_name(m)] then
      glia.no_grad(function()
        for _, p in ipairs(m:parameters()) do p:copy_(glia.rand(p:shape()):add(0.5)) end
      end)
    end
  end
  for _ = 1, 4 do
    glia.no_grad(function() model(glia.randn(shape):mul(1.5):add(0.5)) end)
    nn.schedule_step(model)
  end
  model:eval()
  local x = glia.randn(shape):add(0.5)
  local want = model(x)
  local folded = nn.fold(model)
  local got = folded(x)
  local d = t.maxdiff(got, want)
  t.diag(("%s: max |folded - model| %.3g, max |model| %.3g"):format(desc, d, t.maxdiff(want, glia.zeros(want:shape()))))
  if not t.ok(d <= 1e-5 * max(1, t.maxdiff(want, glia.zeros(want:shape()))), desc) then
    t.diag("max abs difference " .. d)
  end
  t.ok(not has_norm(folded) and has_norm(model) and u.identical(model(x), want),
       desc .. ": no norm is left in the copy, and the model is unchanged")
  return folded
end

for _, name in ipairs { "RepBN", "PRepBN", "BatchNorm1d" } do
  local make = function(c) return nn[name](c) end
  local shape = name == "BatchNorm1d" and { 12, 6 } or { 3, 4, 6 }
  check_fold(nn.Sequential(make(6), nn.Linear(6, 5)), shape, name .. " -> Linear folds into the Linear")
  check_fold(nn.Sequential(make(6), nn.Linear(6, 5, { bias = false })), shape,
             name .. " -> Linear without bias folds, creating the bias")
  check_fold(nn.Sequential(nn.Linear(6, 6), make(6), nn.ReLU(), nn.Linear(6, 2)), shape,
             name .. " after a Linear (the patch-embedding position) folds into it, bias and eta included")
  check_fold(nn.Sequential(nn.Linear(6, 6, { bias = false }), make(6), nn.GELU()), shape,
             name .. " after a Linear without bias folds, creating the bias")
end
check_fold(nn.Sequential(nn.Linear(6, 6), nn.RepBN(6), TokenMean(), nn.Dropout(0.2), nn.Linear(6, 3)), { 3, 4, 6 },
           "final RepBN -> token mean -> dropout -> head folds into the head")
check_fold(Block(6, nn.RepBN), { 2, 5, 6 }, "RepBN feeding q, k, v and a SwiGLU's gate and up folds into each")
check_fold(Block(6, function(c) return nn.PRepBN(c, { steps = 2 }) end), { 2, 5, 6 },
           "PRepBN feeding q, k, v and a SwiGLU's gate and up folds into each")

do -- a small SLAB-like network
  local C = 8
  local net = nn.Sequential(nn.Linear(12, C), nn.RepBN(C),
                            Block(C, function(c) return nn.PRepBN(c, { steps = 3 }) end),
                            Block(C, function(c) return nn.PRepBN(c, { steps = 3, norm = "rms" }) end),
                            nn.Residual(nn.Sequential(nn.RepBN(C), nn.Linear(C, C), nn.ReLU(), nn.Linear(C, C))),
                            nn.PRepBN(C, { steps = 3 }), TokenMean(), nn.Linear(C, 10))
  local folded = check_fold(net, { 4, 9, 12 }, "a small SLAB-like network (patch embedding, blocks, final norm, head) folds")
  local n_id = 0
  for _, m in ipairs(folded:modules()) do if nn.Module.class_name(m) == "Identity" then n_id = n_id + 1 end end
  t.is(n_id, 7, "every one of its 7 norms became an Identity")
end

do -- a declared "from" pair: the norm reads a layer's output
  local Embed = nn.Module:extend("TestEmbed")
  function Embed:__init() self.proj = nn.Linear(5, 6) self.norm = nn.RepBN(6) end
  function Embed:forward(x) return self.norm(self.proj(x):relu() + self.proj(x)) end
  local e = Embed()
  randomize(e)
  glia.no_grad(function() e(glia.randn(3, 4, 5)) end)
  e:eval()
  t.error_like(function() nn.fold(e) end, "norm 'norm' %(RepBN%(6.*no linear neighbour",
               "a norm in a module without fold_pairs is an error naming it")
  local Embed2 = Embed:extend("TestEmbed2")
  function Embed2:forward(x) return self.norm(self.proj(x)) end
  function Embed2:fold_pairs() return { { norm = "norm", from = "proj" } } end
  check_fold(Embed2(), { 3, 4, 5 }, "a declared { norm, from } pair folds the norm into the layer before it")
end

-- Convolutions: these run once nn.Conv2d (branch conv) is in.
if nn.Conv2d then
  -- {B,C,H,W} -> {B,H*W,C}: a reshape keeping each channel, so fold crosses it.
  local Tokens = nn.Module:extend("TestTokens")
  Tokens.fold_transparent = true
  function Tokens:forward(x) return x:flatten(3, 4):transpose(2, 3) end
  check_fold(nn.Sequential(nn.Conv2d(3, 6, 3, { padding = 1 }), nn.BatchNorm2d(6), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)), { 2, 3, 5, 5 },
             "Conv2d -> BatchNorm2d folds into the conv")
  check_fold(nn.Sequential(nn.Conv2d(3, 6, 2, { stride = 2, bias = false }), Tokens(), nn.RepBN(6), nn.GELU()),
             { 2, 3, 4, 4 }, "a patch-embedding Conv2d without bias -> tokens -> RepBN folds into the conv, eta included")
  check_fold(nn.Sequential(nn.Conv2d(4, 4, 3, { padding = 1, groups = 4 }), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
             { 2, 4, 5, 5 }, "a depth-wise Conv2d -> BatchNorm2d and a final BatchNorm2d -> pool -> head fold")
  check_fold(nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.ReLU()), { 2, 3, 7 },
             "Conv1d -> BatchNorm1d folds into the conv")
  t.error_like(function() nn.fold(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, { padding = 1 })):eval()) end,
               "norm '1' %(BatchNorm2d.-%) has no linear neighbour",
               "a BatchNorm2d before a conv does not fold (the padding would not see its shift)")
end

-- errors
do
  local m = nn.Sequential(nn.RepBN(4), nn.Linear(4, 2))
  t.error_like(function() nn.fold(m) end,
               "^t/repbn.t:%d+: glia.nn.fold: '<model>' %(Sequential%) is in training mode: folding uses the running statistics, call model:eval%(%) first",
               "folding a model in training mode is an error")
  m:eval()
  m[2]:train()
  t.error_like(function() nn.fold(m) end, "'2' %(Linear%(4 %-> 2%)%) is in training mode",
               "folding a model with one module in training mode is an error naming it")
  t.error_like(function() nn.fold(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.RepBN(4), nn.ReLU()):eval()) end,
               "^t/repbn.t:%d+: glia.nn.fold: norm '3' %(RepBN%(4, eps=1e%-05, momentum=0.1%)%) has no linear neighbour",
               "a norm with no linear neighbour is an error naming it")
  t.error_like(function() nn.fold(nn.RepBN(4):eval()) end, "norm '<model>' %(RepBN",
               "a lone norm is an error")
  t.error_like(function() nn.fold(nn.Sequential(nn.BatchNorm1d(4, { track_running_stats = false }), nn.Linear(4, 2)):eval()) end,
               "^t/repbn.t:%d+: glia.nn.BatchNorm1d: without running statistics",
               "a BatchNorm1d without running statistics cannot fold")
  local Bad = nn.Module:extend("TestBad")
  function Bad:__init() self.n = nn.RepBN(4) self.l = nn.Linear(3, 2) end
  function Bad:fold_pairs() return self.pairs end
  local bad = Bad()
  bad:eval()
  bad.pairs = { { norm = "n", into = { "l" } } }
  t.error_like(function() nn.fold(bad) end,
               "norm 'n' %(RepBN.-%) has 4 channels but the layer 'l' %(Linear%(3 %-> 2%)%) after it has weight {2,3}",
               "a declared Linear of the wrong size is an error naming both")
  bad.pairs = { { norm = "n", into = { "lin" } } }
  t.error_like(function() nn.fold(bad) end, "fold_pairs of '<model>' %(TestBad%) names 'lin', which is not a module",
               "a declared path that names nothing is an error")
  bad.pairs = { { norm = "l", into = { "n" } } }
  t.error_like(function() nn.fold(bad) end, "names 'l' %(Linear.-%) as a norm", "a declared norm that is not one is an error")
  bad.pairs = { { norm = "n" } }
  t.error_like(function() nn.fold(bad) end, "needs `into`", "a declared pair without into or from is an error")
  t.error_like(function() nn.fold(42) end, "glia.nn.fold: expected a module, got number", "fold takes a module")
end

t.done()

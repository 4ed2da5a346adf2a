-- t/nn.t -- glia.nn: module registration and traversal, every layer's
-- forward against plain-Lua references, state dicts (through safetensors
-- files too) and their errors, train/eval, BatchNorm1d running statistics,
-- gradients, initializer statistics, printing, nn.functional, and causal
-- self-attention (reference, causality, KV-cache decoding).
--
-- Tolerances: layer outputs agree with fp64 Lua references to 1e-5 (f32
-- kernels on O(1) values); gradchecks use f32 central differences with the
-- eps/atol stated at each call; initializer moments are checked on 20000+
-- draws to within 4% of the expected value.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"
local nn = require "glia.nn"

local sqrt, exp, tanh, abs, huge = math.sqrt, math.exp, math.tanh, math.abs, math.huge
local SEED = u.seed(1234)

local TOL = 1e-5

-- ================================================================ helpers

local function names(list)
  local out = {}
  for i, e in ipairs(list) do out[i] = e[1] end
  return table.concat(out, " ")
end

-- Mean and standard deviation of all elements of a tensor.
local function moments(x)
  local v = t.flat(x, {})
  local s, ss = 0, 0
  for i = 1, #v do s = s + v[i] end
  local m = s / #v
  for i = 1, #v do ss = ss + (v[i] - m) ^ 2 end
  return m, sqrt(ss / #v)
end

local function max_abs(x)
  local m = 0
  for _, v in ipairs(t.flat(x, {})) do m = math.max(m, abs(v)) end
  return m
end

-- y = x W^T + b on a list of rows (tables).
local function linear_ref(rows, W, b)
  local out = {}
  for r, x in ipairs(rows) do
    out[r] = {}
    for o = 1, #W do
      local s = b and b[o] or 0
      for i = 1, #x do s = s + x[i] * W[o][i] end
      out[r][o] = s
    end
  end
  return out
end

local function map_rows(x3, fn)
  local out = {}
  for b = 1, #x3 do out[b] = fn(x3[b]) end
  return out
end

-- ============================================ registration and traversal

local Block = nn.Module:extend("Block")
function Block:__init(d)
  self.fc = nn.Linear(d, 2 * d)
  self.scale = nn.Parameter(glia.ones(d))
  self.note = "plain field"
  self.cache = glia.zeros(3)                    -- a plain tensor: not registered
  self:add_buffer("steps", glia.zeros(1))
  self.norm = nn.LayerNorm(2 * d)
end
function Block:forward(x)
  return self.norm(self.fc(x * self.scale))
end

local Net = nn.Module:extend("Net")
function Net:__init()
  self.emb = nn.Embedding(5, 4)
  self.blocks = nn.ModuleList(Block(4), Block(4))
  self.head = nn.Linear(8, 5, { bias = false })
end

glia.manual_seed(SEED)
local net = Net()
t.is(names(net:named_parameters()),
     "emb.weight blocks.1.scale blocks.1.fc.weight blocks.1.fc.bias blocks.1.norm.weight "
     .. "blocks.1.norm.bias blocks.2.scale blocks.2.fc.weight blocks.2.fc.bias "
     .. "blocks.2.norm.weight blocks.2.norm.bias head.weight",
     "named_parameters lists own parameters first, then children depth first, in assignment order")
local params = net:parameters()
t.ok(#params == 12 and params[1] == net.emb.weight and params[12] == net.head.weight,
     "parameters returns the same tensors in the same order as named_parameters")
local all_grad = true
for _, p in ipairs(params) do all_grad = all_grad and p:needs_grad() and p:dtype() == "f32" end
t.ok(all_grad, "every parameter is an f32 tensor that requires grad")
t.is(names(net:named_buffers()), "blocks.1.steps blocks.2.steps",
     "buffers are registered with add_buffer and named like parameters")
t.ok(net.blocks[1].cache ~= nil and net.blocks[1].note == "plain field",
     "plain values and unmarked tensors stay ordinary fields")
t.is(#net.blocks, 2, "a ModuleList has a length and integer-indexed children")
t.is(net:num_parameters(), 5 * 4 + 2 * (4 + 4 * 8 + 8 + 8 + 8) + 8 * 5,
     "num_parameters counts the elements of every parameter")
local mods = {}
for _, e in ipairs(net:named_modules()) do mods[#mods + 1] = e[1] end
t.is(table.concat(mods, " "),
     " emb blocks blocks.1 blocks.1.fc blocks.1.norm blocks.2 blocks.2.fc blocks.2.norm head",
     "named_modules walks the tree depth first, parent before children")
t.is(#net:children(), 3, "children lists the direct children only")

-- a class made by hand, the style guide's way
local Hand = setmetatable({}, { __index = nn.Module })
Hand.__index = Hand
Hand.__name = "Hand"
function Hand.new(n)
  local self = nn.Module.init(setmetatable({}, Hand))
  self.w = self:param(glia.ones(n))
  return self
end
function Hand:forward(x) return x * self.w end
local hand = Hand.new(3)
t.ok(#hand:parameters() == 1 and t.maxdiff(hand(glia.full({3}, 2)), { 2, 2, 2 }) == 0,
     "a hand-written class using Module.init registers parameters and is callable")
t.ok(tostring(hand):find("^Hand: 3 parameters"), "a hand-written class prints with its own name")

-- tied weights
local tied = nn.Module()
tied.a = nn.Linear(3, 3, { bias = false })
tied.b = nn.Linear(3, 3, { bias = false })
tied.b.weight = tied.a.weight
t.is(#tied:parameters(), 1, "a tensor shared by two modules is listed once by parameters")
local tsd = tied:state_dict()
t.ok(tsd["a.weight"] and tsd["b.weight"], "state_dict lists a shared tensor under each of its names")

t.error_like(function() net:add_module("a.b", nn.ReLU()) end, "name must be a string without dots",
             "a child name with a dot is rejected")
t.error_like(function() net:add_module("x", 42) end, "child 'x' must be a module",
             "add_module rejects a value that is not a module")
t.error_like(function() nn.Parameter(glia.zeros(2, "i64")) end, "parameters are f32",
             "Parameter rejects a tensor that is not f32")
t.error_like(function() nn.ModuleList()(glia.ones(1)) end, "ModuleList has no forward",
             "calling a module without forward names its class")

-- apply, train/eval, zero_grad
local visited = {}
net:apply(function(m) visited[#visited + 1] = nn.Module.class_name(m) end)
t.is(table.concat(visited, " "), "Linear LayerNorm Linear Block LayerNorm Linear Block ModuleList Embedding Net",
     "apply visits every module once, children before their parent")
t.ok(net:eval() == net, "eval returns the module")
local all_eval = true
for _, m in ipairs(net:modules()) do all_eval = all_eval and m.training == false end
t.ok(all_eval, "eval switches every module of the tree to evaluation mode")
net:train()
local all_train = true
for _, m in ipairs(net:modules()) do all_train = all_train and m.training == true end
t.ok(all_train, "train switches every module back to training mode")
net:train(false)
t.ok(net.blocks[2].fc.training == false, "train(false) is eval")
net:train()

local ids = glia.tensor({ { 1, 2, 3 }, { 5, 4, 1 } }, "i64")
local function net_forward(x)
  for _, b in ipairs(net.blocks) do x = b(x:narrow(3, 1, 4)) end
  return net.head(x)
end
net_forward(net.emb(ids)):sum():backward()
local grads = true
for _, p in ipairs(net:parameters()) do grads = grads and p.grad ~= nil end
t.ok(grads, "backward through the tree gives every parameter a gradient")
net:zero_grad()
local cleared = true
for _, p in ipairs(net:parameters()) do cleared = cleared and p.grad == nil end
t.ok(cleared, "zero_grad clears every parameter's gradient")

-- ================================================================ layers

glia.manual_seed(SEED)
local lin = nn.Linear(4, 3)
local x2 = glia.randn(5, 4)
local W, b = lin.weight:totable(), lin.bias:totable()
t.near(lin(x2), linear_ref(x2:totable(), W, b), TOL, "Linear computes x W^T + b")
t.ok(lin.weight:size(1) == 3 and lin.weight:size(2) == 4, "Linear's weight is {out, in}")
local x3 = glia.randn(2, 3, 4)
t.near(lin(x3), map_rows(x3:totable(), function(r) return linear_ref(r, W, b) end), TOL,
       "Linear applies to the last dim of a 3-D input")
local xt = glia.randn(4, 5):t()
t.near(lin(xt), linear_ref(xt:totable(), W, b), TOL, "Linear takes a transposed (strided) input")
local nob = nn.Linear(4, 2, { bias = false })
t.ok(nob.bias == nil and #nob:parameters() == 1, "Linear with bias = false has only a weight")
t.near(nob(x2), linear_ref(x2:totable(), nob.weight:totable()), TOL, "Linear without bias computes x W^T")
t.is(lin(glia.zeros(0, 4)):size(1), 0, "Linear maps an empty batch to an empty batch")
t.error_like(function() lin(glia.randn(2, 5)) end, "glia.linear", "Linear on the wrong width raises the op's error")
t.error_like(function() nn.Linear(4.5, 2) end, "in_features must be an integer", "Linear rejects a fractional size")

local emb = nn.Embedding(6, 3)
local E = emb.weight:totable()
local eids = glia.tensor({ { 1, 6 }, { 3, 3 } }, "i64")
t.near(emb(eids), { { E[1], E[6] }, { E[3], E[3] } }, 0, "Embedding picks weight rows by 1-based ids")
t.error_like(function() emb(glia.tensor({ 7 }, "i64")) end, "glia.embedding",
             "Embedding rejects an id past the vocabulary")

-- LayerNorm / RMSNorm with non-trivial affine parameters
local norm_ref = u.norm_ref

local ln = nn.LayerNorm(4)
t.near(ln.weight, { 1, 1, 1, 1 }, 0, "LayerNorm's weight starts at ones")
t.near(ln.bias, { 0, 0, 0, 0 }, 0, "LayerNorm's bias starts at zeros")
nn.init.normal_(ln.weight)
nn.init.normal_(ln.bias)
t.near(ln(x2), norm_ref(x2:totable(), ln.weight:totable(), ln.bias:totable(), 1e-5, true), TOL,
       "LayerNorm normalizes the last dim and applies weight and bias")
local ln_plain = nn.LayerNorm(4, { elementwise_affine = false, eps = 1e-3 })
t.ok(#ln_plain:parameters() == 0, "LayerNorm without elementwise_affine has no parameters")
t.near(ln_plain(x2), norm_ref(x2:totable(), nil, nil, 1e-3, true), TOL, "LayerNorm honours eps")

local rms = nn.RMSNorm(4)
nn.init.normal_(rms.weight)
t.near(rms(x2), norm_ref(x2:totable(), rms.weight:totable(), nil, 1e-6, false), TOL,
       "RMSNorm scales by the reciprocal root mean square and the weight")

-- activations and dropout
local xa = glia.randn(3, 5)
local function pointwise(x, f)
  local out = {}
  for i, r in ipairs(x:totable()) do
    out[i] = {}
    for j, v in ipairs(r) do out[i][j] = f(v) end
  end
  return out
end
t.near(nn.ReLU()(xa), pointwise(xa, function(v) return math.max(v, 0) end), 0, "ReLU is max(x, 0)")
t.near(nn.GELU()(xa), glia.gelu(xa, "none"), 0,
       "GELU defaults to the exact erf form (t/unary.t checks it against erf), as PyTorch's")
t.ok(nn.GELU().approximate == "none", "GELU's default approximate is \"none\"")
t.near(nn.GELU("tanh")(xa), pointwise(xa, function(v)
  return 0.5 * v * (1 + tanh(sqrt(2 / math.pi) * (v + 0.044715 * v ^ 3)))
end), TOL, "GELU('tanh') is the tanh approximation")
t.near(nn.GELU({ approximate = "tanh" })(xa), glia.gelu(xa, "tanh"), 0, "GELU takes an options table too")
t.error_like(function() nn.GELU("fast") end, "approximate must be", "GELU rejects an unknown approximation")
t.near(nn.SiLU()(xa), pointwise(xa, function(v) return v / (1 + exp(-v)) end), TOL, "SiLU is x * sigmoid(x)")
t.ok(nn.Identity()(xa) == xa, "Identity returns its input")

local drop = nn.Dropout(0.25)
local ones = glia.ones(100, 100)
local dv = t.flat(drop(ones), {})
local zeros, scaled, other = 0, 0, 0
for _, v in ipairs(dv) do
  if v == 0 then zeros = zeros + 1
  elseif abs(v - 1 / 0.75) < 1e-6 then scaled = scaled + 1
  else other = other + 1 end
end
t.ok(other == 0 and abs(zeros / 10000 - 0.25) < 0.03,
     "Dropout in training zeroes about p of the values and scales the rest by 1/(1-p)")
drop:eval()
t.near(drop(xa), xa, 0, "Dropout in eval mode is the identity")
t.error_like(function() nn.Dropout(1.5) end, "p must be a number in %[0, 1%]", "Dropout rejects p outside [0, 1]")

-- containers
local seq = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
t.near(seq(x2), seq[3](seq[2](seq[1](x2))), 0, "Sequential feeds its input through each child in order")
local seq2 = nn.Sequential({ nn.Identity(), nn.ReLU() })
t.is(#seq2, 2, "Sequential also takes a list of modules")
t.is(names(seq:named_parameters()), "1.weight 1.bias 3.weight 3.bias",
     "Sequential names its children by position")
t.error_like(function() nn.Sequential(nn.ReLU(), 5) end, "item 2 is a number, not a module",
             "Sequential rejects a non-module item")
local list = nn.ModuleList()
list:append(nn.Linear(2, 2)):append(nn.Linear(2, 3))
t.ok(#list == 2 and list[2].out_features == 3, "ModuleList.append adds children at the end")
local md = nn.ModuleDict({ { "enc", nn.Linear(2, 2) }, { "dec", nn.Linear(2, 2) } })
t.is(names(md:named_parameters()), "enc.weight enc.bias dec.weight dec.bias",
     "ModuleDict keeps the order of a list of pairs")
local md2 = nn.ModuleDict({ zeta = nn.Linear(1, 1), alpha = nn.Linear(1, 1, { bias = false }) })
t.ok(names(md2:named_parameters()) == "alpha.weight zeta.weight zeta.bias" and md2.zeta.in_features == 1,
     "ModuleDict registers a keyed table in sorted key order")
local inner = nn.Linear(4, 4)
t.near(nn.Residual(inner)(x2), x2 + inner(x2), 0, "Residual adds its input to the inner module's output")

-- ============================================================ BatchNorm1d

-- Batch statistics of x {N,C} or {N,C,L} per channel: mean, biased var, count.
local function channel_stats(x)
  local v, C = x:totable(), x:size(2)
  local mean, var, n = {}, {}, 0
  for c = 1, C do
    local vals = {}
    for i = 1, #v do
      if type(v[i][c]) == "table" then
        for l = 1, #v[i][c] do vals[#vals + 1] = v[i][c][l] end
      else
        vals[#vals + 1] = v[i][c]
      end
    end
    local s = 0
    for _, a in ipairs(vals) do s = s + a end
    mean[c] = s / #vals
    local ss = 0
    for _, a in ipairs(vals) do ss = ss + (a - mean[c]) ^ 2 end
    var[c] = ss / #vals
    n = #vals
  end
  return mean, var, n
end

-- (x - mean) / sqrt(var + eps) * w + b channel-wise on x's table.
local function bn_ref(x, mean, var, w, bb, eps)
  local v = x:totable()
  local function f(a, c) return (a - mean[c]) / sqrt(var[c] + eps) * w[c] + bb[c] end
  for i = 1, #v do
    for c = 1, #v[i] do
      if type(v[i][c]) == "table" then
        for l = 1, #v[i][c] do v[i][c][l] = f(v[i][c][l], c) end
      else
        v[i][c] = f(v[i][c], c)
      end
    end
  end
  return v
end

local bn = nn.BatchNorm1d(3)
nn.init.normal_(bn.weight)
nn.init.normal_(bn.bias)
local bw, bb = bn.weight:totable(), bn.bias:totable()
t.is(names(bn:named_buffers()), "running_mean running_var num_batches_tracked",
     "BatchNorm1d's running statistics are buffers named as in PyTorch")
local rm, rv = { 0, 0, 0 }, { 1, 1, 1 }
for step = 1, 2 do
  local xb = glia.randn(6, 3):mul(step):add(step)
  local mean, var, n = channel_stats(xb)
  t.near(bn(xb), bn_ref(xb, mean, var, bw, bb, 1e-5), TOL,
         "BatchNorm1d in training normalizes {N,C} with the batch mean and biased variance (step " .. step .. ")")
  for c = 1, 3 do
    rm[c] = 0.9 * rm[c] + 0.1 * mean[c]
    rv[c] = 0.9 * rv[c] + 0.1 * var[c] * n / (n - 1)
  end
end
t.near(bn.running_mean, rm, TOL, "BatchNorm1d's running mean follows momentum 0.1 over two steps")
t.near(bn.running_var, rv, TOL, "BatchNorm1d's running variance uses the unbiased batch variance")
t.is(bn.num_batches_tracked:item(), 2, "BatchNorm1d counts the batches it tracked")
bn:eval()
local rm_before = bn.running_mean:clone()
local xe = glia.randn(4, 3)
t.near(bn(xe), bn_ref(xe, rm, rv, bw, bb, 1e-5), TOL, "BatchNorm1d in eval mode normalizes with the running statistics")
t.near(bn.running_mean, rm_before, 0, "BatchNorm1d in eval mode leaves the running statistics alone")

local bn3 = nn.BatchNorm1d(2, { momentum = 0.5, eps = 1e-3 })
local x3b = glia.randn(3, 2, 4):add(1)
local m3, v3, n3 = channel_stats(x3b)
t.near(bn3(x3b), bn_ref(x3b, m3, v3, { 1, 1 }, { 0, 0 }, 1e-3), TOL,
       "BatchNorm1d normalizes {N,C,L} over the batch and length dims")
t.near(bn3.running_var, { 0.5 + 0.5 * v3[1] * n3 / (n3 - 1), 0.5 + 0.5 * v3[2] * n3 / (n3 - 1) }, TOL,
       "BatchNorm1d honours momentum on {N,C,L} input")
bn3:eval()
t.near(bn3(x3b), bn_ref(x3b, bn3.running_mean:totable(), bn3.running_var:totable(), { 1, 1 }, { 0, 0 }, 1e-3),
       TOL, "BatchNorm1d in eval mode broadcasts the running statistics over {N,C,L}")
local bn_free = nn.BatchNorm1d(3, { track_running_stats = false, affine = false })
t.ok(#bn_free:buffers() == 0 and #bn_free:parameters() == 0,
     "BatchNorm1d without running stats or affine has no buffers and no parameters")
bn_free:eval()
local mf, vf = channel_stats(xe)
t.near(bn_free(xe), bn_ref(xe, mf, vf, { 1, 1, 1 }, { 0, 0, 0 }, 1e-5), TOL,
       "BatchNorm1d without running stats uses batch statistics even in eval mode")
t.error_like(function() bn(glia.randn(4, 5)) end, "BatchNorm1d: expected input {N,3} or {N,3,L}, got {4,5}",
             "BatchNorm1d names the expected and the given shape")
bn:train()
t.error_like(function() bn(glia.randn(1, 3)) end, "more than one value per channel",
             "BatchNorm1d in training rejects a batch of one")

-- ====================================================== gradients

glia.manual_seed(SEED)
local mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
local xm, ym = glia.randn(6, 4), glia.tensor({ 1, 2, 3, 1, 2, 3 }, "i64")
nn.F.cross_entropy(mlp(xm), ym):backward()
local every = true
for _, p in ipairs(mlp:parameters()) do
  every = every and p.grad ~= nil and p.grad:shape()[1] == p:shape()[1]
end
t.ok(every, "backward of an MLP's loss gives a gradient to every parameter")

local gl, gln, gbn = nn.Linear(3, 4), nn.LayerNorm(4), nn.BatchNorm1d(4)
nn.init.normal_(gln.weight, 1, 0.3)
nn.init.normal_(gbn.weight, 1, 0.3)
local gx = glia.randn(5, 3)
u.gradcheck(function(x) return gbn(gln(gl(x))) end,
            { gx, gl.weight, gl.bias, gln.weight, gln.bias, gbn.weight, gbn.bias },
            "gradcheck: Linear -> LayerNorm -> BatchNorm1d, input and every parameter (eps 1e-2, atol 2e-2)",
            { eps = 1e-2, atol = 2e-2, rtol = 2e-2 })

-- ============================================================ state dicts

glia.manual_seed(1)
local src = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
src(glia.randn(5, 3))                                   -- moves the running stats
glia.manual_seed(2)
local dst = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
local sd = src:state_dict()
local keys = {}
for k in pairs(sd) do keys[#keys + 1] = k end
table.sort(keys)
t.is(table.concat(keys, " "), "1.bias 1.weight 2.bias 2.num_batches_tracked 2.running_mean 2.running_var "
     .. "2.weight 3.bias 3.weight", "state_dict holds every parameter and buffer under its dotted name")
t.ok(not sd["1.weight"]:needs_grad(), "state_dict's tensors are detached")
local missing, unexpected = dst:load_state_dict(sd)
t.ok(#missing == 0 and #unexpected == 0, "a strict load of a matching state dict reports nothing missing")
src:eval()
dst:eval()
local xs = glia.randn(3, 3)
t.near(dst(xs), src(xs), 0, "a loaded model computes what the saved one did, running stats included")

local path = os.tmpname()
t.ok(glia.save(path, src:state_dict()), "a state dict saves with glia.save")
glia.manual_seed(3)
local dst2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
local loaded = assert(glia.load(path))
dst2:load_state_dict(loaded)
dst2:eval()
t.near(dst2(xs), src(xs), 0, "a state dict round-trips through a safetensors file")
t.is(dst2[2].num_batches_tracked:item(), 1, "the i64 batch counter round-trips through the file")
os.remove(path)

local bad = src:state_dict()
bad["1.weight"] = glia.zeros(2, 2)
bad["3.bias"] = nil
bad["2.running_var"] = nil
bad["extra.weight"] = glia.zeros(1)
local before = dst:state_dict()["3.weight"]:clone()
local ok, err = pcall(function() dst:load_state_dict(bad) end)
t.ok(not ok and err:find("missing keys: 2.running_var, 3.bias", 1, true),
     "a strict load names every missing key")
t.ok(err and err:find("unexpected keys: extra.weight", 1, true), "a strict load names every unexpected key")
t.ok(err and err:find("shape mismatch: 1.weight (checkpoint {2,2}, model {4,3})", 1, true),
     "a load names each shape mismatch with both shapes")
t.near(dst[3].weight, before, 0, "a failed load copies nothing")

bad["1.weight"] = nil
local partial = src:state_dict()
partial["1.weight"], partial["3.bias"], partial["extra"] = nil, nil, glia.ones(1)
nn.init.zeros_(dst[3].weight)
local miss, unexp = dst:load_state_dict(partial, { strict = false })
t.ok(table.concat(miss, " ") == "1.weight 3.bias" and table.concat(unexp, " ") == "extra",
     "a non-strict load returns the missing and unexpected keys")
t.near(dst[3].weight, src[3].weight, 0, "a non-strict load copies the keys that match")
t.error_like(function() dst:load_state_dict({ ["1.weight"] = glia.zeros(3) }, { strict = false }) end,
             "shape mismatch: 1.weight", "a non-strict load still rejects a shape mismatch")
t.error_like(function() dst:load_state_dict({ ["1.weight"] = 5 }, { strict = false }) end,
             "1.weight %(checkpoint holds a number", "a non-tensor value is named as a mismatch")

-- ============================================================ initializers

glia.manual_seed(SEED)
local big = glia.empty(200, 150)                        -- fan_in 150, fan_out 200
local function near_rel(got, want, desc)
  t.ok(abs(got - want) <= 0.04 * abs(want), desc)
  if abs(got - want) > 0.04 * abs(want) then t.diag(("got %g, want %g"):format(got, want)) end
end
local m, s = moments(nn.init.normal_(big, 2, 3))
near_rel(m, 2, "normal_ draws with the given mean")
near_rel(s, 3, "normal_ draws with the given standard deviation")
nn.init.uniform_(big, -2, 5)
m, s = moments(big)
local lo, hi = math.huge, -math.huge
for _, v in ipairs(t.flat(big, {})) do lo, hi = math.min(lo, v), math.max(hi, v) end
t.ok(lo >= -2 and hi <= 5 and lo < -1.9 and hi > 4.9, "uniform_ fills the interval [a, b]")
near_rel(s, 7 / sqrt(12), "uniform_ has the standard deviation of U(a, b)")
local xb = sqrt(6 / 350)
nn.init.xavier_uniform_(big)
t.ok(max_abs(big) <= xb, "xavier_uniform_ stays within sqrt(6 / (fan_in + fan_out))")
near_rel(select(2, moments(big)), xb / sqrt(3), "xavier_uniform_ has std sqrt(2 / (fan_in + fan_out))")
near_rel(select(2, moments(nn.init.xavier_normal_(big, 2))), 2 * sqrt(2 / 350),
         "xavier_normal_ has std gain * sqrt(2 / (fan_in + fan_out))")
nn.init.kaiming_uniform_(big)
t.ok(max_abs(big) <= sqrt(6 / 150), "kaiming_uniform_ stays within sqrt(6 / fan_in) by default")
near_rel(select(2, moments(big)), sqrt(2 / 150), "kaiming_uniform_ has std sqrt(2 / fan_in) by default")
near_rel(select(2, moments(nn.init.kaiming_normal_(big, { mode = "fan_out", nonlinearity = "relu" }))),
         sqrt(2 / 200), "kaiming_normal_ with mode fan_out has std sqrt(2 / fan_out)")
near_rel(select(2, moments(nn.init.kaiming_normal_(big, { a = 1 }))), sqrt(1 / 150),
         "kaiming_normal_'s a is leaky_relu's slope")
t.near(nn.init.zeros_(glia.ones(2, 3)), { { 0, 0, 0 }, { 0, 0, 0 } }, 0, "zeros_ fills with zeros")
t.near(nn.init.ones_(glia.zeros(3)), { 1, 1, 1 }, 0, "ones_ fills with ones")
t.is(select(1, nn.init.fans(glia.empty(8, 3, 2, 2))), 12, "fan_in of a 4-D weight counts the receptive field")
t.error_like(function() nn.init.xavier_uniform_(glia.empty(5)) end, "at least 2 dims",
             "fan-based initializers reject a 1-D tensor")
t.ok(abs(nn.init.calculate_gain("relu") - sqrt(2)) < 1e-12 and nn.init.calculate_gain("tanh") == 5 / 3,
     "calculate_gain knows relu and tanh")
t.is(nn.init.normal_(glia.empty(0, 4)):numel(), 0, "initializers leave a zero-element tensor alone")

local wl = nn.Linear(400, 60)
local bound = 1 / sqrt(400)
t.ok(max_abs(wl.weight) <= bound and max_abs(wl.bias) <= bound,
     "Linear's default init stays within 1/sqrt(in) for weight and bias")
near_rel(select(2, moments(wl.weight)), bound / sqrt(3), "Linear's default weight is U(-1/sqrt(in), 1/sqrt(in))")
local we = nn.Embedding(300, 80)
local em, es = moments(we.weight)
t.ok(abs(em) < 0.03 and abs(es - 1) < 0.04, "Embedding's default weight is N(0, 1)")

glia.manual_seed(77)
local r1 = nn.Sequential(nn.Linear(5, 3), nn.Embedding(4, 2))
glia.manual_seed(77)
local r2 = nn.Sequential(nn.Linear(5, 3), nn.Embedding(4, 2))
local same = true
for i, p in ipairs(r1:parameters()) do same = same and t.maxdiff(p, r2:parameters()[i]) == 0 end
t.ok(same, "the same seed gives the same initial parameters")
glia.manual_seed(78)
local r3 = nn.Linear(5, 3)
t.ok(t.maxdiff(r3.weight, r1[1].weight) > 0, "a different seed gives different parameters")

-- ============================================================ printing

local printed = tostring(net)
t.ok(printed:find("^Net: 180 parameters"), "tostring starts with the class and the total parameter count")
t.ok(printed:find("\n  %(blocks%) ModuleList: 120 parameters\n    %(1%) Block: 60 parameters"),
     "tostring indents children under their parent with names and subtotals")
t.ok(printed:find("(fc) Linear(4 -> 8): 40 parameters", 1, true)
     and printed:find("(head) Linear(8 -> 5, no bias): 40 parameters", 1, true),
     "tostring shows each layer's configuration")
t.ok(tostring(nn.Sequential(nn.ReLU())) == "Sequential\n  (1) ReLU", "modules without parameters print no count")
t.ok(tostring(nn.LayerNorm(1, { bias = false })):find(": 1 parameter$"), "a single parameter is singular")

-- ============================================================ functional

local logits, tgt = glia.randn(5, 4), glia.tensor({ 1, 4, -100, 2, 3 }, "i64")
t.near(nn.F.cross_entropy(logits, tgt), glia.cross_entropy(logits, tgt), 0,
       "F.cross_entropy defaults to the op's defaults (mean, ignore_index -100)")
t.near(nn.F.cross_entropy(logits, tgt, { reduction = "sum", label_smoothing = 0.1 }),
       glia.cross_entropy(logits, tgt, -100, 0.1, "sum"), 0,
       "F.cross_entropy maps label_smoothing and reduction to the op's arguments")
local tgt2 = glia.tensor({ 1, 4, 2, 2, 3 }, "i64")
local none = nn.F.cross_entropy(logits, tgt2, { ignore_index = 2, reduction = "none" })
t.ok(none:size(1) == 5 and none[3] == 0 and none[4] == 0, "F.cross_entropy's ignore_index gives ignored rows no loss")
local ya = glia.randn(5, 4)
t.near(nn.F.mse(logits, ya, { reduction = "sum" }), glia.mse(logits, ya, "sum"), 0, "F.mse passes its reduction")
t.near(nn.F.softmax(logits), glia.softmax(logits, -1), 0, "F.softmax defaults to the last dim")
t.near(nn.F.gelu(logits), glia.gelu(logits, "none"), 0, "F.gelu defaults to the exact form, as PyTorch's")
t.near(nn.F.gelu(logits, "tanh"), glia.gelu(logits, "tanh"), 0, "F.gelu passes the tanh form on")
t.near(nn.F.relu(logits), glia.relu(logits), 0, "F.relu is glia.relu")
t.near(nn.F.dropout(logits, 0.5, false), logits, 0, "F.dropout with training false is the identity")
t.error_like(function() nn.F.cross_entropy(logits, tgt, "sum") end, "options must be a table",
             "F.cross_entropy rejects options that are not a table")

-- ===================================================== causal self-attention

-- Plain-Lua multi-head causal attention of one sequence x (T rows of C).
local function attention_ref(attn, x)
  local C, H = attn.d_model, attn.n_heads
  local D = C / H
  local qkv = linear_ref(x, attn.qkv.weight:totable(), attn.qkv.bias and attn.qkv.bias:totable())
  local merged = {}
  for i = 1, #x do merged[i] = {} end
  for h = 1, H do
    local off = (h - 1) * D
    for i = 1, #x do
      local scores, mx = {}, -huge
      for j = 1, i do
        local s = 0
        for d = 1, D do s = s + qkv[i][off + d] * qkv[j][C + off + d] end
        scores[j] = s / sqrt(D)
        mx = math.max(mx, scores[j])
      end
      local z = 0
      for j = 1, i do scores[j] = exp(scores[j] - mx) z = z + scores[j] end
      for d = 1, D do
        local o = 0
        for j = 1, i do o = o + scores[j] / z * qkv[j][2 * C + off + d] end
        merged[i][off + d] = o
      end
    end
  end
  return linear_ref(merged, attn.proj.weight:totable(), attn.proj.bias and attn.proj.bias:totable())
end

glia.manual_seed(SEED)
local attn = nn.CausalSelfAttention(6, 2)
t.is(names(attn:named_parameters()), "qkv.weight qkv.bias proj.weight proj.bias",
     "CausalSelfAttention holds a fused qkv projection and an output projection")
local xq = glia.randn(2, 4, 6)
local want = map_rows(xq:totable(), function(seq) return attention_ref(attn, seq) end)
local paths = { { "composed VM ops", false } }
if glia.attention then paths[2] = { "fused glia.attention", true } end
for _, path in ipairs(paths) do
  attn.fused = path[2]
  t.near(attn(xq), want, TOL, "CausalSelfAttention (" .. path[1] .. ") equals a plain-Lua reference")
  local changed = xq:clone()
  changed[{ 1, 4, 2 }] = 10
  changed[{ 2, 3, 5 }] = -10
  local y0, y1 = attn(xq), attn(changed)
  t.ok(t.maxdiff(y0:narrow(2, 1, 3)[1], y1:narrow(2, 1, 3)[1]) == 0
       and t.maxdiff(y0:narrow(2, 1, 2)[2], y1:narrow(2, 1, 2)[2]) == 0
       and t.maxdiff(y0:narrow(2, 4, 1)[1], y1:narrow(2, 4, 1)[1]) > 0,
       "CausalSelfAttention (" .. path[1] .. ") is causal: a later token changes no earlier output")
end
attn.fused = nil
t.ok(attn:use_fused() == (glia.attention ~= nil), "CausalSelfAttention uses glia.attention when the build has it")

attn(xq):sum():backward()
local agrads = true
for _, p in ipairs(attn:parameters()) do agrads = agrads and p.grad ~= nil end
t.ok(agrads, "CausalSelfAttention passes gradients to every parameter")
attn:zero_grad()
attn.fused = false
u.gradcheck(function(x) return attn(x) end, { glia.randn(1, 3, 6), attn.proj.weight },
            "gradcheck: CausalSelfAttention (composed) w.r.t. input and projection weight (eps 1e-2, atol 2e-2)",
            { eps = 1e-2, atol = 2e-2, rtol = 2e-2 })
attn.fused = nil

local dattn = nn.CausalSelfAttention(6, 3, { dropout = 0.5, bias = false })
t.ok(dattn.qkv.bias == nil and dattn.proj.bias == nil, "CausalSelfAttention with bias = false has no biases")
t.ok(not dattn:use_fused(), "attention dropout in training takes the composed path")
dattn:eval()
local ye = dattn(xq)
t.near(ye, map_rows(xq:totable(), function(seq) return attention_ref(dattn, seq) end), TOL,
       "CausalSelfAttention in eval mode applies no dropout")
dattn:train()
t.ok(t.maxdiff(dattn(xq), ye) > 0, "CausalSelfAttention in training applies dropout")

if glia.attention_decode then
  local cache = attn:new_cache(2, 2)
  local steps = {}
  glia.no_grad(function()
    for i = 1, 4 do steps[i] = attn(xq:narrow(2, i, 1), cache) end
  end)
  t.near(glia.cat(steps, 2), want, TOL, "decoding one token at a time through a KV cache equals the full forward")
else
  t.ok(true, "# SKIP no glia.attention_decode in this build")
end

t.error_like(function() attn(glia.randn(2, 4, 5)) end, "expected input {B,T,6}, got {2,4,5}",
             "CausalSelfAttention names the expected and the given shape")
t.error_like(function() nn.CausalSelfAttention(6, 4) end, "d_model 6 is not a multiple of n_heads 4",
             "CausalSelfAttention rejects heads that do not divide d_model")
t.ok(tostring(attn):find("CausalSelfAttention(d_model=6, n_heads=2, kv_heads=2, causal=true, dropout=0): 168 parameters", 1, true),
     "CausalSelfAttention prints its shape and parameter count")

t.done()

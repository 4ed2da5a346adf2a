-- t/error_location.t -- an error points at the line of the user's script
-- that called into glia, not at a line of glia's stdlib: a C op called
-- directly, through an operator, through a stdlib wrapper or an nn module,
-- a stdlib function's own checks through several stdlib layers (options,
-- optimizers, data loaders, glia.skip plans), and user code that the
-- stdlib calls back (a dataset's get, a module's forward).
local t = require "t.tap"
local glia = require "glia"
local nn = require "glia.nn"
local optim = require "glia.optim"
local data = require "glia.data"
local skip = require "glia.skip"

-- fn is written on one line of this file; its error must start with that
-- line's position ("t/error_location.t:<line>: "), then match pattern.
-- fn must not end in a tail call (`return f(x)`), which would take its own
-- frame off the stack.
local function blames_line(fn, pattern, desc)
  local info = debug.getinfo(fn, "S")
  local where = info.short_src .. ":" .. info.linedefined .. ": "
  local ok, err = pcall(fn)
  err = tostring(err)
  local good = not ok and err:sub(1, #where) == where and err:find(pattern, #where + 1) ~= nil
  if not t.ok(good, desc) then
    t.diag(ok and "no error raised" or ("error was: " .. err .. "\nwanted: " .. where .. pattern))
  end
end

t.ok(debug.getinfo(1, "S").short_src:find("error_location%.t$"), "positions name this script")

-- ================================================================= ops

local a, b = glia.zeros(2, 3), glia.zeros(4, 5)
blames_line(function() glia.add(a, b) end, "^glia%.add: shapes {2,3} and {4,5} do not broadcast",
            "an op called directly blames the calling line")
blames_line(function() local _ = a - b end, "^glia%.sub: shapes {2,3} and {4,5}",
            "an operator blames the line with the operator")
blames_line(function() local _ = a * "x" end, "^glia%.mul: argument #2",
            "an operator's argument check blames the line with the operator")
local bools = glia.zeros(2):to("bool")
blames_line(function() local _ = -bools end, "^glia%.neg: x must be f32, got bool {2}",
            "unary minus blames the line with the operator, naming neg")
blames_line(function() glia.conv2d(glia.zeros(1, 2, 5, 5), glia.zeros(4, 3, 3, 3)) end,
            "^glia%.conv2d: weight {4,3,3,3} needs",
            "an op under a Lua wrapper of glia's init.lua blames the caller of the wrapper")
blames_line(function() nn.functional.dropout(a, "x") end, "^glia%.dropout: argument #2 must be a number",
            "an op's number check under nn.functional blames the caller, naming the op")
blames_line(function() glia.split(3, 1) end, "^glia%.split: expected a tensor, got number",
            "glia.split of a non-tensor blames the caller, not a line of init.lua")
blames_line(function() glia.split(glia.zeros(4), { 1, 2 }) end, "^glia%.split: lengths sum to 3",
            "a Lua function of glia's init.lua blames its caller")

blames_line(function() glia.load({}) end, "^glia%.load: argument #1 must be a string, got table",
            "glia.load's path check, under its stdlib wrapper, blames the caller, naming the op")
blames_line(function() glia.save("x.safetensors", 3) end,
            "^glia%.save: argument #2 must be a table, got number",
            "glia.save's table check names the op")
blames_line(function() glia.tensor({ 1 }, 5) end, "^glia%.tensor: argument #2 must be a string",
            "glia.tensor's dtype check names the op")
blames_line(function() a:register_grad_hook(5) end,
            "^glia%.tensor%.register_grad_hook: argument #2 must be a function or nil, got number",
            "register_grad_hook's check names the method")

local ok, err = pcall(glia.add, a, b)
t.ok(not ok and err:find("^glia%.add: shapes"),
     "an op called from C (pcall) has no line to blame and gets no position, as before")
ok, err = pcall(function() glia.error("mine", 2) end)
t.is(err, "mine", "glia.error called from user code is error(): level 2 blames pcall, a C function")

-- ============================================================== glia.nn

local lin = nn.Linear(3, 4)
blames_line(function() lin(glia.zeros(2, 5)) end, "^glia%.linear: size mismatch, {2,5} x {4,3}",
            "nn.Linear's forward with a wrong input blames the call of the module")
local seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(5, 2))
blames_line(function() seq(glia.zeros(2, 3)) end, "^glia%.linear: size mismatch, {2,4} x {2,5}",
            "a module deep in a Sequential blames the call of the Sequential")
blames_line(function() nn.Linear(3, 4, { biass = true }) end,
            "^glia%.nn%.Linear: unknown option 'biass'",
            "a constructor's unknown option blames the constructor's call")
blames_line(function() nn.LayerNorm(8)(glia.zeros(2, 5)) end, "^glia%.layer_norm: weight {8}",
            "nn.LayerNorm's forward blames the call of the module")
local moe = nn.MoE(8, 4, 2)
blames_line(function() moe(glia.zeros(2, 3, 5)) end,
            "^glia%.nn%.MoE: expected input {%.%.%., 8}, got {2,3,5}",
            "nn.MoE's forward with a wrong shape blames the call of the module")
blames_line(function() nn.MoE(8, 4, 2, { activation = "nope" }) end,
            "^glia%.nn%.MoE: unknown activation 'nope'",
            "nn.MoE's bad option blames the constructor's call")
local block = nn.TransformerBlock(8, 2)
blames_line(function() block(glia.zeros(2, 3, 5)) end, "^glia%.layer_norm: weight {8}",
            "a TransformerBlock fed the wrong width blames the call of the block")

blames_line(function() glia.no_grad(lin, glia.zeros(2, 5)) end, "^glia%.linear: size mismatch",
            "past the stdlib's own pcall (glia.no_grad) to the user's line")
ok, err = pcall(nn.Linear, 3, 4, { biass = true })
t.ok(not ok and err:find("^glia%.nn%.Linear: unknown option"),
     "a stdlib function called from C (pcall) blames pcall, as error() does: no position")

local Net = nn.Module:extend("Net")
function Net:__init() self.fc = nn.Linear(3, 2) end
local forward_line = debug.getinfo(1, "l").currentline + 1
function Net:forward(x) local y = glia.add(x, glia.zeros(7)) return y end
ok, err = pcall(function() Net()(glia.zeros(2, 3)) end)
t.ok(not ok and err:find("^[^:]*error_location%.t:" .. forward_line .. ": glia%.add: "),
     "an op failing in a user module's forward blames the forward's line, under the stdlib's __call")

local bn = nn.BatchNorm1d(3)
blames_line(function() bn(glia.randn(1, 3)) end, "more than one value per channel",
            "BatchNorm1d's refusal of a batch of one blames the call of the module")
local logits, labels = glia.randn(2, 4), glia.tensor({ 1, 2 }, "i64")
blames_line(function() nn.functional.cross_entropy(logits, labels, { reduction = "avg" }) end,
            "reduction must be", "cross_entropy's bad reduction blames its call")
blames_line(function() glia.moe_route(glia.randn(4, 3), { normalize = 1 }) end,
            "^glia%.moe_route: normalize must be a boolean, got 1", "glia.moe_route's bad option blames its call")

-- ============================================================ optimizers

local p = glia.zeros(3)
blames_line(function() optim.SGD({ p }, { lr = -0.1 }) end,
            "^glia%.optim%.SGD: lr must be a number >= 0",
            "an optimizer's bad lr blames the constructor's call")
blames_line(function() optim.AdamW({ p }, { weight_decya = 0.1 }) end,
            "^glia%.optim%.AdamW: unknown option 'weight_decya'",
            "an optimizer's unknown option blames the constructor's call")
blames_line(function() optim.SGD({ glia.zeros(3, "f64") }) end,
            "^glia%.optim%.SGD: parameter 1 of group 1",
            "an optimizer's bad parameter blames the constructor's call")

-- ================================================================= data

local ds = data.TensorDataset(glia.zeros(4, 2))
blames_line(function() data.DataLoader(ds, { batchsize = 2 }) end,
            "^data%.DataLoader: unknown option 'batchsize'",
            "DataLoader's unknown option blames the call")
blames_line(function() data.DataLoader(ds, { batch_size = 0 }) end,
            "^data%.DataLoader: batch_size must be a positive integer",
            "DataLoader's bad batch size blames the call")
blames_line(function() data.CharDataset("abc", glia.zeros(2)) end,
            "^data%.CharDataset: vocab must be a string", "CharDataset's bad vocab blames the call")
blames_line(function() data.CharDataset("abc"):encode(7) end,
            "^glia%.byte_encode: argument #1 must be a string, got number",
            "CharDataset:encode's C check blames the call, naming the op")
local get_line = debug.getinfo(1, "l").currentline + 2
local bad = { len = function() return 4 end }
function bad.get(_, idx) local y = glia.add(idx, glia.zeros(9)) return y end
ok, err = pcall(function() for _ in data.DataLoader(bad, { batch_size = 2 }):iter() do end end)
t.ok(not ok and err:find("^[^:]*error_location%.t:" .. get_line .. ": glia%.add: "),
     "an op failing in a user dataset's get blames the get, called back by the loader")

-- =========================================================== checkpoint

local checkpoint = require "glia.checkpoint"
local dir = os.tmpname()
blames_line(function() checkpoint.save(dir, { step = 1, extra = { ["a.b"] = 1 } }) end,
            "^glia%.checkpoint%.save: extra keys must be strings without dots",
            "checkpoint.save's refusal, three stdlib calls deep, blames its call")
os.remove(dir)

-- ============================================================ glia.skip

blames_line(function() skip.plan_uniform(8, 5) end, "keeps 1 of 8 layers; at least two",
            "skip.plan_uniform's refusal blames the call")
blames_line(function() skip.parse(8, "uls:x") end, "^glia%.skip%.parse: cannot read \"uls:x\"",
            "skip.parse's refusal blames the call")
local plain, plan = nn.Sequential(nn.Linear(2, 2)), skip.plan_uniform(8, 2)
blames_line(function() skip.set_plan(plain, plan) end,
            "^glia%.skip%.set_plan: the model has no TransformerBlocks",
            "skip.set_plan on a model without TransformerBlocks blames the call")

t.done()

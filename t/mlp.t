-- t/mlp.t -- models/mlp.lua (the mlp_fmnist model) and the training loop of
-- examples/train_fmnist.lua, run as a user runs it on tiny Fashion-MNIST-
-- shaped IDX files that this test writes: 28x28 images whose class is the
-- band of bright rows, so a few epochs learn it.
local t = require "t.tap"
local glia = require "glia"
local data = require "glia.data"
local MLP = require "models.mlp"
local u = require "t.util"

local fmt, concat = string.format, table.concat

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function lines(s)
  local out = {}
  for l in (s or ""):gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

local dir = io.popen("mktemp -d"):read("*l")
local exe = os.getenv("GLIA_BIN") or "bin/glia"

-- Runs the example with an argument string; returns stdout, stderr, status.
local function train(args)
  local cmd = fmt("%s examples/train_fmnist.lua %s </dev/null >%s/out 2>%s/err; echo $?",
                  sh_quote(exe), args, dir, dir)
  local f = io.popen(cmd)
  local code = tonumber(f:read("*l"))
  f:close()
  return slurp(dir .. "/out") or "", slurp(dir .. "/err") or "", code
end

-- ======================================================= the model

glia.manual_seed(1)
local model = MLP()
local names, shapes = {}, {}
for i, e in ipairs(model:named_parameters()) do
  names[i], shapes[i] = e[1], concat(e[2]:shape(), "x")
end
t.is(concat(names, " "), "1.weight 1.bias 3.weight 3.bias 5.weight 5.bias",
     "the default MLP names its parameters like a PyTorch Sequential, one-based")
t.is(concat(shapes, " "), "512x784 512 256x512 256 10x256 10",
     "the default MLP is the workload's 784-512-256-10")
t.ok(tostring(model):find("^MLP%(784%-512%-256%-10%): 535,818 parameters"),
     "printing the model shows its widths and parameter count")

local small = MLP{ sizes = { 6, 5, 4, 3 } }
local x = glia.randn(7, 6)
t.is(concat(small(x):shape(), "x"), "7x3", "a configured MLP maps {N, in} to {N, out} logits")
local h = small[2](small[1](x))
t.near(small(x), small[5](small[4](small[3](h))), 1e-6,
       "the forward pass is Linear, ReLU, Linear, ReLU, Linear in turn")
t.ok(h:min():item() >= 0, "the hidden activations go through a ReLU")

local y = small(x):argmax(-1)
local loss, acc = small:evaluate(x, y)
t.is(acc, 1, "evaluate scores 100% against the model's own predictions")
t.near(loss, glia.cross_entropy(small(x), y):item(), 1e-5,
       "evaluate's loss is the mean cross entropy")
small:train()
small:evaluate(x, y)
t.ok(small.training, "evaluate leaves a model in training mode as it found it")
t.ok(small[1].weight.grad == nil, "evaluate records no gradient")

t.error_like(function() MLP{ sizes = { 784 } } end, "sizes must list at least",
             "an MLP needs at least an input and an output width")
t.error_like(function() MLP{ sizes = { 784, 0, 10 } } end, "sizes%[2%] must be a positive integer",
             "a width that is not a positive integer is named")

-- ======================================================= tiny IDX files

local rng = data.Generator(7)
u.write_fmnist(dir, "train", 256, rng)
u.write_fmnist(dir, "t10k", 100, rng)
local xs, ys = data.fashion_mnist("train", { dir = dir })
local yf = ys:to("f32")
t.ok(xs:size(1) == 256 and xs:size(2) == 784 and yf:min():item() == 1 and yf:max():item() == 10,
     "the test's IDX files read back as a Fashion-MNIST split of 256 images in 10 classes")

-- ======================================================= training runs

local out, err, code = train(fmt("--epochs 3 --batch 16 --seed 3 --data %s --out %s",
                                 sh_quote(dir), sh_quote(dir .. "/run")))
local l = lines(out)
t.is(code, 0, "the example trains on the tiny files and exits with status 0")
if code ~= 0 then t.diag(err) end
t.ok(l[#l] and l[#l]:find("^test accuracy: %d+%.%d%%$"),
     "the last line printed is `test accuracy: NN.N%`")

local epoch_loss, final_acc = {}, tonumber((l[#l] or ""):match("(%d+%.%d)%%"))
for _, s in ipairs(l) do
  local e, lo = s:match("^epoch (%d+)/3  train loss ([%d.]+)")
  if e then epoch_loss[tonumber(e)] = tonumber(lo) end
end
t.ok(#epoch_loss == 3, "each epoch prints a summary line")
t.ok(epoch_loss[3] and epoch_loss[3] < epoch_loss[1] * 0.5,
     fmt("the training loss falls over three epochs (%s -> %s)", tostring(epoch_loss[1]),
         tostring(epoch_loss[3])))
t.ok(final_acc and final_acc >= 90, fmt("the rule is learnt: test accuracy %s%% >= 90%%",
                                        tostring(final_acc)))
t.ok(err:find("epoch 1/3  16/16  100%", 1, true) ~= nil,
     "the progress bar reports each epoch's 16 batches on stderr")

local csv = lines(slurp(dir .. "/run/train_log.csv"))
t.is(csv[1], "epoch,step,lr,loss,test_loss,test_acc,time", "the CSV log starts with its header")
t.is(#csv, 1 + 3 * 16 + 3, "the CSV log has a line per step and a line per epoch")
t.ok(csv[#csv] and csv[#csv]:find("^3,48,,,[%d.]+,[%d.]+,[%d.]+$"),
     "the last CSV line holds the final test loss and accuracy")
local svg = slurp(dir .. "/run/loss_curve.svg") or ""
t.ok(svg:find("^<svg") and svg:find("polyline") and svg:find(">train<") and svg:find(">test<"),
     "the loss curve is an SVG with the train and test series")

-- ======================================================= bad input

out, err, code = train("--epochs 1 --data " .. sh_quote(dir .. "/nowhere"))
t.ok(code == 1 and err:find("dataset%-fashion%-mnist"),
     "a missing data directory fails with status 1 and names the Debian package")
out, err, code = train("--epochs 0")
t.ok(code == 1 and err:find("--epochs must be a positive integer", 1, true),
     "a zero epoch count is refused")
out, err, code = train("--lr")
t.ok(code == 1 and err:find("--lr needs a value", 1, true), "an option without its value is refused")
out, err, code = train("--bogus 1")
t.ok(code == 1 and err:find("unknown argument --bogus", 1, true) and err:find("usage:"),
     "an unknown option is refused with the usage")

os.execute("rm -rf " .. sh_quote(dir))
t.done()

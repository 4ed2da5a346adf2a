-- t/vit.t -- models/vit.lua (the small ViT with softmax or SLA attention
-- and LayerNorm, BatchNorm or PRepBN), its folding, and the scripts built
-- on it: examples/train_vit.lua and examples/slab_study.lua, run on tiny
-- Fashion-MNIST-shaped IDX files that this test writes.
local t = require "t.tap"
local u = require "t.util"
local glia = require "glia"
local nn = require "glia.nn"
local optim = require "glia.optim"
local data = require "glia.data"
local ViT = require "models.vit"

local fmt, concat = string.format, table.concat

-- A small config (4x4 grid of 16 tokens, dim 16, one block) with the given choices.
local function small(attention, norm, extra)
  local cfg = { attention = attention, norm = norm, dim = 16, depth = 1, heads = 2, mlp_ratio = 2 }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return ViT(cfg)
end

local function shape(x) return concat(x:shape(), "x") end

-- ================================================= every combination

glia.manual_seed(1)
local x = glia.rand(6, 784)
for _, a in ipairs { "softmax", "sla" } do
  for _, n in ipairs { "layer", "batch", "prepbn" } do
    local m = small(a, n, { steps = 3 })
    local y = m(x)
    t.is(shape(y), "6x10", fmt("%s + %s: images {6,784} give logits {6,10}", a, n))
    t.is(shape(m(x:view(6, 1, 28, 28))), "6x10", fmt("%s + %s: images {6,1,28,28} too", a, n))
  end
end
local m = small("sla", "layer", { patch = 4 })
t.is(shape(m(x)), "6x10", "patch 4 makes a 7x7 grid of 49 tokens that SLA takes")
t.ok(tostring(m):find("^ViT%(attention=sla, norm=layer, 7x7 patches of 4"),
     "printing the model shows its choices and grid")
t.ok(ViT{ attention = "sla" }.blocks[1].attn.grid[1] == 4, "the default patch 7 gives SLA a 4x4 grid")

-- ================================================= training lowers the loss

-- Images whose class is the band of bright rows, as u.write_fmnist draws them.
local xs, ys = glia.rand(40, 28, 28):mul(0.3), {}
for i = 1, 40 do
  local c = i % 10
  xs:narrow(1, i, 1):narrow(2, 2 * c + 4, 2):fill_(1)
  ys[i] = c + 1
end
xs, ys = xs:view(40, 784), glia.tensor(ys, "i64")

-- n Adam steps of mod on the batch (advancing its schedules); the first and last loss.
local function fit(mod, n)
  local opt = optim.Adam(mod:parameters(), { lr = 3e-3 })
  local first, last
  for _ = 1, n do
    local loss = nn.F.cross_entropy(mod(xs), ys)
    opt:zero_grad()
    loss:backward()
    opt:step()
    nn.schedule_step(mod)
    first, last = first or loss:item(), loss:item()
  end
  return first, last
end

for _, cfg in ipairs { { "softmax", "layer" }, { "sla", "prepbn" }, { "sla", "batch" } } do
  glia.manual_seed(2)
  local first, last = fit(small(cfg[1], cfg[2], { steps = 5 }), 12)
  t.ok(last < first * 0.7, fmt("%s + %s: 12 Adam steps lower the loss (%.3f -> %.3f)", cfg[1],
                               cfg[2], first, last))
end

-- ================================================= folding

glia.manual_seed(3)
local p = small("sla", "prepbn", { warmup = 1, steps = 3, depth = 2 })
fit(p, 6)
t.is(p.blocks[1].norm1:lam(), 0, "after 6 steps the PRepBN schedule (warmup 1, steps 3) is all RepBN")
p:eval()
local folded = nn.fold(p)
local left = {}
for _, e in ipairs(folded:named_modules()) do
  local name = nn.Module.class_name(e[2])
  if name:find("Norm") or name:find("BN") then left[#left + 1] = e[1] end
end
t.is(concat(left, " "), "", "the folded model has no norm left")
t.near(folded(xs), p(xs), 1e-5, "the folded model's outputs equal the trained model's to 1e-5")
t.ok(p.blocks[1].norm1.repbn ~= nil, "folding leaves the model itself unchanged")

local b = small("softmax", "batch", { depth = 2 })
b(xs)
b:eval()
t.near(nn.fold(b)(xs), b(xs), 1e-5, "a \"batch\" model folds too, outputs to 1e-5")
local ln = small("softmax", "layer"):eval()
local ln_folded = nn.fold(ln)
t.ok(nn.Module.class_name(ln_folded.blocks[1].norm1) == "LayerNorm",
     "folding a LayerNorm model leaves its LayerNorms: they have no fixed affine map")
t.near(ln_folded(xs), ln(xs), 0, "and its outputs are the same")

-- ================================================= bad options

t.error_like(function() ViT{ attention = "flash" } end, 'attention must be "softmax" or "sla"',
             "an unknown attention is named")
t.error_like(function() ViT{ norm = "group" } end, 'norm must be "layer", "batch" or "prepbn"',
             "an unknown norm is named")
t.error_like(function() ViT{ patch = 5 } end, "image side 28 is not a multiple of the patch 5",
             "a patch that does not tile the image is refused")
t.error_like(function() ViT{ dim = 30, heads = 4 } end, "dim 30 is not a multiple of heads 4",
             "a dim the heads do not divide is refused")
t.error_like(function() ViT{ depth = 0 } end, "depth must be an integer >= 1", "a zero depth is refused")
t.error_like(function() ViT{ layers = 2 } end, "unknown option 'layers'", "an unknown key is refused")
t.error_like(function() small("sla", "layer")(glia.rand(2, 3, 28, 28)) end, "expected images",
             "an input that is not 28x28 single-channel images is refused")

-- ================================================= the scripts

local dir = io.popen("mktemp -d"):read("*l")
local exe = u.exe()
local rng = data.Generator(7)
u.write_fmnist(dir, "train", 64, rng)
u.write_fmnist(dir, "t10k", 40, rng)

local function run(script, args)
  return u.sh(fmt("%s examples/%s %s </dev/null 2>%s/err", u.sh_quote(exe), script, args, dir))
end

local out, code = run("train_vit.lua", fmt("--attention sla --norm prepbn --epochs 2 --batch 16 "
                                            .. "--fold --data %s --out %s", u.sh_quote(dir),
                                            u.sh_quote(dir .. "/run")))
t.is(code, 0, "train_vit trains SLA + PRepBN on the tiny files and exits with status 0")
if code ~= 0 then t.diag(u.slurp(dir .. "/err")) end
t.ok(out:find("\ntest accuracy: %d+%.%d%%\n$"), "its last line is `test accuracy: NN.N%`")
local before, after, diff = out:match("folded: test accuracy ([%d.]+)%% before, ([%d.]+)%% after; "
                                      .. "largest logit difference ([%d.e+-]+)")
t.ok(before and before == after and tonumber(diff) < 1e-4,
     fmt("--fold reports the same accuracy before and after (%s, %s) and a tiny difference (%s)",
         tostring(before), tostring(after), tostring(diff)))
t.ok(out:find("eval throughput: %d+ images/s unfolded, %d+ images/s folded"),
     "--fold reports the eval throughput of both models")
t.ok(u.slurp(dir .. "/run/loss_curve.svg"):find("^<svg"), "--out writes the loss curve")

out, code = run("train_vit.lua", "--norm layer --fold --data " .. u.sh_quote(dir))
t.ok(code == 1 and u.slurp(dir .. "/err"):find("--fold needs --norm batch or prepbn", 1, true),
     "--fold with LayerNorm is refused")
out, code = run("train_vit.lua", "--attention flash")
t.ok(code == 1 and u.slurp(dir .. "/err"):find("--attention must be softmax or sla", 1, true),
     "an unknown --attention is refused")

out, code = run("slab_study.lua", fmt("--quick --data %s --out %s", u.sh_quote(dir),
                                      u.sh_quote(dir .. "/study")))
t.is(code, 0, "slab_study --quick runs on the tiny files")
if code ~= 0 then t.diag(u.slurp(dir .. "/err")) end
local ok, table_md = pcall(u.slurp, dir .. "/study/table.md")
table_md = ok and table_md or ""
t.ok(table_md:find("LN + softmax", 1, true) and table_md:find("PRepBN + SLA", 1, true)
     and table_md:find("BN + SLA", 1, true), "table.md has a row for each of the three configs")
t.ok(table_md:find("images/s", 1, true) and table_md:find("| 256 |", 1, true),
     "table.md has the throughput and the scaling sections")
local ok2, svg = pcall(u.slurp, dir .. "/study/plot.svg")
t.ok(ok2 and svg:find("^<svg") and svg:find(">SLA<", 1, true) and svg:find(">softmax<", 1, true),
     "plot.svg plots SLA against softmax attention")

os.execute("rm -rf " .. u.sh_quote(dir))
t.done()

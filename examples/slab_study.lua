-- examples/slab_study.lua -- the SLAB study on Fashion-MNIST: does
-- PRepBN + SLA train as well as LayerNorm + softmax attention, and what do
-- folding and linear attention buy?
--
--   bin/glia examples/slab_study.lua --out DIR [--seeds 3] [--epochs 3] [--quick] [--data DIR]
--
-- 1. Accuracy: examples/train_vit.lua (models/vit.lua) for three configs,
--    the same budget and seeds 0..seeds-1: LN + softmax (the baseline),
--    PRepBN + SLA (SLAB) and BN + SLA (LayerNorm swapped for a plain
--    BatchNorm directly). Each run is its own process, as a user runs it.
-- 2. Folding: the PRepBN and BN runs fold their norms (--fold) and report
--    the accuracy before and after and the largest logit difference; then
--    the eval throughput (images/s, batches of 500) of the three models,
--    unfolded and folded, measured here on random images (speed does not
--    depend on the weights).
-- 3. Scaling: the forward time of one attention layer's core, B = 1, H = 8
--    heads of d = 64, for N = 256 .. 16384 tokens: glia.linear_attention
--    (SLA's) against glia.attention (exact softmax, not causal).
--
-- Writes DIR/table.md (the three sections as Markdown tables), DIR/plot.svg
-- (section 3 on log-log axes) and DIR/runs/ (each training run's output).
-- --quick shrinks every budget (64 training images, one seed, N up to 512)
-- so that a test runs the whole pipeline in seconds; its figures mean nothing.
local script_dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/../?.lua;" .. package.path

local glia = require "glia"
local nn   = require "glia.nn"
local plot = require "glia.plot"
local cli  = require "glia.cli"
local ViT  = require "models.vit"

local fmt, concat, min, sqrt = string.format, table.concat, math.min, math.sqrt
local stdout, stderr = io.stdout, io.stderr

local USAGE = [[
usage: glia examples/slab_study.lua --out DIR [options]
  --out DIR     where table.md, plot.svg and runs/ go (required)
  --seeds N     training runs per config, seeds 0..N-1 (3; 1 with --quick)
  --epochs N    epochs of each run (3)
  --quick       tiny budgets: checks the pipeline in seconds, measures nothing
  --data DIR    read the IDX files from DIR instead of /usr/share/datasets/fashion-mnist
]]

local opts, given = cli.parse(arg or {}, {
  options = {
    out    = { "string" },
    seeds  = { "integer", 3 },
    epochs = { "integer", 3 },
    data   = { "string" },
    quick  = { "flag" },
  },
  min = "positive",
}, USAGE)

local function die(msg)
  stderr:write("slab_study: ", msg, "\n")
  os.exit(1)
end

if not opts.out then die("--out DIR is required\n" .. USAGE) end
local quick = opts.quick
local seeds = (quick and not given.seeds) and 1 or opts.seeds
local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
os.execute("mkdir -p " .. q(opts.out .. "/runs"))

local exe = arg[-1] or "glia"
local CONFIGS = {
  { name = "LN + softmax", attention = "softmax", norm = "layer" },
  { name = "PRepBN + SLA", attention = "sla", norm = "prepbn" },
  { name = "BN + SLA (direct swap)", attention = "sla", norm = "batch" },
}

-- ========================================================= 1. accuracy

-- Runs train_vit once; returns the figures it printed.
local function train(cfg, seed)
  local args = { "--attention", cfg.attention, "--norm", cfg.norm, "--epochs", opts.epochs,
                 "--seed", seed }
  if cfg.norm ~= "layer" then args[#args + 1] = "--fold" end
  if quick then
    for _, a in ipairs { "--train", 64, "--batch", 16 } do args[#args + 1] = a end
  end
  if opts.data then args[#args + 1] = "--data"; args[#args + 1] = q(opts.data) end
  local log = fmt("%s/runs/%s_%s_seed%d.txt", opts.out, cfg.attention, cfg.norm, seed)
  local cmd = fmt("%s %s/train_vit.lua %s >%s 2>/dev/null", q(exe), q(script_dir),
                  concat(args, " "), q(log))
  local t0 = glia.clock()
  local status = os.execute(cmd)
  local f = io.open(log, "rb")
  local out = f and f:read("*a") or ""
  if f then f:close() end
  local acc = tonumber(out:match("test accuracy: ([%d.]+)%%\n$"))
  if (status ~= true and status ~= 0) or not acc then
    die(fmt("the run `%s` failed; its output is in %s", cmd, log))
  end
  local r = { acc = acc, time = glia.clock() - t0 }
  local b, a, d = out:match("folded: test accuracy ([%d.]+)%% before, ([%d.]+)%% after; "
                            .. "largest logit difference ([%d.e+-]+)")
  r.before, r.after, r.diff = tonumber(b), tonumber(a), tonumber(d)
  return r
end

local results = {}
for _, cfg in ipairs(CONFIGS) do
  results[cfg] = {}
  for s = 1, seeds do
    stdout:write(fmt("training %s, seed %d ...", cfg.name, s - 1))
    stdout:flush()
    local r = train(cfg, s - 1)
    results[cfg][s] = r
    stdout:write(fmt(" %.1f%% in %.0f s\n", r.acc, r.time))
  end
end

local function mean_sd(xs)
  local sum, n = 0, #xs
  for _, v in ipairs(xs) do sum = sum + v end
  local m, ss = sum / n, 0
  for _, v in ipairs(xs) do ss = ss + (v - m) ^ 2 end
  return m, n > 1 and sqrt(ss / (n - 1)) or 0
end

-- ========================================================= 2. throughput

-- Images per second of m in eval mode, batches of `batch` random images,
-- the best of `reps` timed passes after a warm-up.
local function throughput(m, batch, reps)
  local x = glia.rand(batch, 784)
  local best = math.huge
  glia.no_grad(function()
    m(x)
    for _ = 1, reps do
      local t0 = glia.clock()
      m(x)
      best = min(best, glia.clock() - t0)
    end
  end)
  return batch / best
end

stdout:write("measuring eval throughput ...\n")
local TP_BATCH, TP_REPS = quick and 32 or 500, quick and 1 or 5
glia.manual_seed(0)
local speed = {}
for _, cfg in ipairs(CONFIGS) do
  local m = ViT{ attention = cfg.attention, norm = cfg.norm }
  if cfg.norm ~= "layer" then m(glia.rand(8, 784)) end -- running statistics of some sort
  m:eval()
  speed[cfg] = { unfolded = throughput(m, TP_BATCH, TP_REPS) }
  if cfg.norm ~= "layer" then speed[cfg].folded = throughput(nn.fold(m), TP_BATCH, TP_REPS) end
end

-- ========================================================= 3. scaling

stdout:write("timing attention against N ...\n")
local H, D = 8, 64
local NS = quick and { 256, 512 } or { 256, 512, 1024, 2048, 4096, 8192, 16384 }
local scaling = {}
-- the best time of fn over reps calls after one warm-up call
local function best_time(fn, reps)
  fn()
  local best = math.huge
  for _ = 1, reps do
    local t0 = glia.clock()
    fn()
    best = min(best, glia.clock() - t0)
  end
  return best
end
glia.no_grad(function()
  for i, N in ipairs(NS) do
    local qt, kt, vt = glia.randn(1, H, N, D), glia.randn(1, H, N, D), glia.randn(1, H, N, D)
    local reps = quick and 1 or (N <= 2048 and 5 or 2)
    scaling[i] = {
      N = N,
      sla = best_time(function() return glia.linear_attention(qt, kt, vt) end, reps),
      softmax = best_time(function() return glia.attention(qt, kt, vt, false) end,
                          N >= 8192 and 1 or reps),
    }
    stdout:write(fmt("  N %5d: SLA %.2f ms, softmax %.2f ms\n", N, scaling[i].sla * 1e3,
                     scaling[i].softmax * 1e3))
  end
end)

-- ========================================================= the report

local L = {}
local function add(...) L[#L + 1] = fmt(...) end
add("# SLAB study on Fashion-MNIST%s", quick and " (--quick: tiny budgets, figures meaningless)" or "")
add("")
add("Command: `glia examples/slab_study.lua --out %s --seeds %d --epochs %d%s`. Model: models/vit.lua "
    .. "at its defaults (4x4 grid of 7x7 patches, dim 64, 4 blocks, 4 heads), Adam with a cosine "
    .. "decay from 2e-3, batch %d, %s training images.", opts.out, seeds, opts.epochs,
    quick and " --quick" or "", quick and 16 or 128, quick and "64" or "all 60000")
add("")
add("## 1. Test accuracy (%%), seeds 0..%d", seeds - 1)
add("")
local head, rule = { "| config |" }, { "|---|" }
for s = 1, seeds do head[#head + 1] = fmt(" seed %d |", s - 1); rule[#rule + 1] = "---:|" end
head[#head + 1], rule[#rule + 1] = " mean ± sd |", "---:|"
add("%s", concat(head))
add("%s", concat(rule))
for _, cfg in ipairs(CONFIGS) do
  local row, accs = { "| " .. cfg.name .. " |" }, {}
  for s, r in ipairs(results[cfg]) do
    accs[s] = r.acc
    row[#row + 1] = fmt(" %.1f |", r.acc)
  end
  local m, sd = mean_sd(accs)
  row[#row + 1] = fmt(" %.2f ± %.2f |", m, sd)
  add("%s", concat(row))
end
add("")
add("## 2. Folding")
add("")
add("| config | seed | accuracy before fold | after fold | largest logit difference |")
add("|---|---:|---:|---:|---:|")
for _, cfg in ipairs(CONFIGS) do
  if cfg.norm ~= "layer" then
    for s, r in ipairs(results[cfg]) do
      add("| %s | %d | %.2f | %.2f | %.1e |", cfg.name, s - 1, r.before or 0 / 0, r.after or 0 / 0,
          r.diff or 0 / 0)
    end
  end
end
add("")
add("Eval throughput, batches of %d images (images/s, best of %d):", TP_BATCH, TP_REPS)
add("")
add("| config | unfolded | folded |")
add("|---|---:|---:|")
for _, cfg in ipairs(CONFIGS) do
  local sp = speed[cfg]
  add("| %s | %.0f | %s |", cfg.name, sp.unfolded, sp.folded and fmt("%.0f", sp.folded) or "-")
end
add("")
add("## 3. Scaling: one attention layer's forward, B = 1, H = %d, d = %d", H, D)
add("")
add("| N | SLA (glia.linear_attention) ms | softmax (glia.attention) ms | softmax / SLA |")
add("|---:|---:|---:|---:|")
local xs, ys_sla, ys_soft = {}, {}, {}
for i, r in ipairs(scaling) do
  add("| %d | %.2f | %.2f | %.1f |", r.N, r.sla * 1e3, r.softmax * 1e3, r.softmax / r.sla)
  xs[i], ys_sla[i], ys_soft[i] = r.N, r.sla * 1e3, r.softmax * 1e3
end
add("")

local f, err = io.open(opts.out .. "/table.md", "wb")
if not f then die(err) end
f:write(concat(L, "\n"))
f:close()
local ok, perr = plot.loss_curve(opts.out .. "/plot.svg", {
  title = fmt("attention forward time, H = %d, d = %d", H, D),
  xlabel = "tokens N", ylabel = "ms", logx = true, logy = true,
  series = { { name = "SLA", x = xs, y = ys_sla }, { name = "softmax", x = xs, y = ys_soft } },
})
if not ok then die(perr) end
stdout:write(fmt("wrote %s/table.md and %s/plot.svg\n", opts.out, opts.out))

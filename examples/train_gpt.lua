-- examples/train_gpt.lua -- trains the character-level GPT (models/gpt.lua)
-- on the King James Bible, or on any text file, with AdamW and gradient
-- clipping. The learning rate warms up linearly, stays at its peak, and
-- decays along a half cosine over the last 20% of the schedule: in runs of
-- minutes, keeping the peak rate through the plateau the loss leaves
-- around step 250 matters (460 steps: val loss 1.690 decaying over the last
-- 30%, 1.675 over the last 15%, 1.916 with a cosine over the whole run).
--
--   glia examples/train_gpt.lua --time 300                 # five minutes, into runs/gpt
--   glia examples/train_gpt.lua --steps 2000 --out runs/a  # a fixed number of steps
--   glia examples/train_gpt.lua --resume runs/a --steps 3000
--   glia examples/sample.lua runs/a --prompt "And God said"
--   mpirun -np 2 --bind-to core -x GLIA_NUM_THREADS=1 bin/glia examples/train_gpt.lua --ddp
--
-- --ddp trains data-parallel over the ranks mpirun starts (glia.distributed):
-- --batch is the global batch, each rank draws the same windows and trains
-- on its --batch / N of them, and gradients are averaged over the ranks
-- during backward. Rank 0 alone prints, logs, evaluates, samples and writes
-- the checkpoint; its clock decides when a --time run stops. A checkpoint
-- resumes with any number of ranks (the batches do not depend on N).
--
-- The validation set is the last 10% of the text; its loss is the mean over
-- 8 fixed batches of 16 x 256 tokens (fewer positions when --ctx is
-- smaller), printed as `val loss: X.XXX` every --eval-every steps, with a
-- sample of generated text. The output directory receives the checkpoint
-- (glia.checkpoint: model, optimizer, step, RNG and data-sampler state),
-- log.csv (one row per step) and loss.svg (the curves), refreshed at each
-- evaluation and at the end.
--
-- Resuming continues bit-identically: batches come from a seeded generator
-- whose state the checkpoint keeps, as it keeps glia's RNG state. The model
-- shape, batch size, seed and text are fixed by the checkpoint (giving one
-- again is allowed only with the checkpoint's value); --steps,
-- --time and the schedule flags may be given again. --steps N counts from
-- the start of the run (a resumed run stops at step N) and sets the length
-- of the schedule unless --decay-steps does; a run limited by --time
-- alone sizes its schedule from the measured step rate, re-estimated at
-- each evaluation.
--
-- --plan fine-tunes under a glia.skip plan (stdlib/glia/skip.lua), e.g.
--   glia examples/train_gpt.lua --resume runs/a --out runs/a-uls2 --plan uls:2 --steps 3200
-- Dropped sub-layers are left out of every forward. With a Unified Layer
-- Skipping plan (uls:S) each sequence's first --prompt-frac of positions
-- is the prompt, run through every layer; the rest is the response, run
-- through the plan's kept layers only, and the loss (validation too) counts
-- the response alone. The plan belongs to this invocation, like --steps.
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia       = require "glia"
local optim      = require "glia.optim"
local data       = require "glia.data"
local progress   = require "glia.progress"
local plot       = require "glia.plot"
local checkpoint = require "glia.checkpoint"
local cli        = require "glia.cli"
local GPT        = require "models.gpt"
local nn         = require "glia.nn"

local fmt, floor, max, min = string.format, math.floor, math.max, math.min
local clock = glia.clock

local USAGE = [[
usage: glia examples/train_gpt.lua [options]
  --steps N          stop at step N (counted from the start of the run)
  --time SECONDS     stop after this much wall time (default 300 when no --steps)
  --out DIR          checkpoint, log.csv and loss.svg (default runs/gpt;
                     with --resume, the resumed directory)
  --resume DIR       continue the run saved in DIR
  --seed N           seed of the initialization and the batches (1337)
  --text PATH        train on this file instead of the King James Bible
  --d N  --layers N  --heads N  --ctx N      model shape (256, 4, 4, 256)
  --batch N          sequences per step (16)
  --lr X             peak learning rate (1e-3)
  --min-lr X         learning rate at the end of the schedule (1e-4)
  --warmup N         steps of linear warm-up (30)
  --decay-steps N    length of the schedule (default: --steps, or estimated)
  --decay-frac F     the last fraction of the schedule, cosine down to --min-lr (0.2;
                     1: all of it; before it the rate stays at --lr)
  --weight-decay X   AdamW's decoupled weight decay (0.1)
  --clip X           gradient clipping by global norm (1.0)
  --eval-every N     steps between validations, samples and checkpoints (100)
  --sample-len N     characters per sample (200; 0: no samples)
  --threads N        compute threads (default: GLIA_NUM_THREADS or all cores)
  --plan TEXT        train under a layer-skip plan: uls:S, attn:i,j, mlp:i,j, block:i,j,
                     joined by + (see the header)
  --prompt-frac F    under a uls plan, the fraction of each sequence that is prompt, in (0, 1) (0.5)
  --experts N        mixture of experts: N experts in place of every block's MLP (0: dense)
  --top-k K          experts per token (2); each of hidden 4 d / K, so the active
                     parameters per token are the dense model's
  --router R         softmax (top-k, renormalized) or sigmoid (DeepSeek-V3) (softmax)
  --shared N         always-on shared experts (0)
  --coe C            Chain-of-Experts iterations (1)
  --aux-alpha X      Switch balance loss weight (0.01; 0: none)
  --bias-gamma X     DeepSeek's bias balancing speed, applied after each step (0: none)
  --ddp              data-parallel over the ranks of mpirun (see above)
]]

-- ================================================================ options

-- Every number is non-negative; those a run cannot do with 0 are positive.
-- The defaults apply after the checkpoint's values when resuming (see
-- `run` below). FIXED options come from the checkpoint when resuming and
-- may not be given again.
local SPEC = {
  options = {
    steps            = { "integer" },
    time             = { "number" },
    out              = { "string" },
    resume           = { "string" },
    seed             = { "integer", 1337 },
    text             = { "string" },
    d                = { "integer", 256, min = "positive" },
    layers           = { "integer", 4, min = "positive" },
    heads            = { "integer", 4, min = "positive" },
    ctx              = { "integer", 256, min = "positive" },
    batch            = { "integer", 16, min = "positive" },
    lr               = { "number", 1e-3 },
    ["min-lr"]       = { "number", 1e-4 },
    warmup           = { "integer", 30 },
    ["decay-steps"]  = { "integer" },
    ["decay-frac"]   = { "number", 0.2 },
    ["weight-decay"] = { "number", 0.1 },
    clip             = { "number", 1.0, min = "positive" },
    ["eval-every"]   = { "integer", 100, min = "positive" },
    ["sample-len"]   = { "integer", 200 },
    threads          = { "integer", min = "positive" },
    plan             = { "string" },
    ["prompt-frac"]  = { "number", 0.5 },
    experts          = { "integer", 0 },
    ["top-k"]        = { "integer", 2, min = "positive" },
    router           = { "string", "softmax" },
    shared           = { "integer", 0 },
    coe              = { "integer", 1, min = "positive" },
    ["aux-alpha"]    = { "number", 0.01 },
    ["bias-gamma"]   = { "number", 0 },
    ddp              = { "flag" },
  },
  min = "non-negative",
}
local FIXED = { "seed", "text", "d", "layers", "heads", "ctx", "batch", "experts", "top-k",
                "router", "shared", "coe" }

local function die(msg)
  io.stderr:write("train_gpt: ", msg, "\n")
  os.exit(1)
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then die(err) end
  local s = f:read("*a")
  f:close()
  return s
end

-- ================================================================ the log

local COLUMNS = { "step", "loss", "val_loss", "lr", "time" }

-- The rows of an existing log.csv with step <= last (a resumed run drops
-- the steps after its checkpoint), as {step = , loss = , ...} tables.
local function read_log(path, last)
  local rows, f = {}, io.open(path, "rb")
  if not f then return rows end
  f:read("*l") -- header
  for line in f:lines() do
    local row, i = {}, 1
    for field in (line .. ","):gmatch("([^,]*),") do
      row[COLUMNS[i]] = tonumber(field)
      i = i + 1
    end
    if row.step and row.step <= last then rows[#rows + 1] = row end
  end
  f:close()
  return rows
end

local function write_curve(path, rows)
  local train = { name = "train", x = {}, y = {}, smooth = 0.9 }
  local val = { name = "val", x = {}, y = {} }
  for _, r in ipairs(rows) do
    train.x[#train.x + 1], train.y[#train.y + 1] = r.step, r.loss
    if r.val_loss then val.x[#val.x + 1], val.y[#val.y + 1] = r.step, r.val_loss end
  end
  return plot.loss_curve(path, { series = { train, val }, title = "char-level GPT",
                                 xlabel = "step", ylabel = "loss (nats/char)" })
end

-- ================================================================ setup

local o, given = cli.parse(arg or {}, SPEC, USAGE)
if not (o["prompt-frac"] > 0 and o["prompt-frac"] < 1) then -- 0 or 1 leaves no prompt or response
  die(fmt("--prompt-frac must be in (0, 1), got %s", tostring(o["prompt-frac"])))
end
if o.threads then glia.set_num_threads(o.threads) end
-- data-parallel: rank 0 of world ranks speaks for the run
local dist = o.ddp and require "glia.distributed"
local rank, world = 0, 1
if dist then rank, world = dist.init() end
local lead = rank == 0

local ck
if o.resume then
  local msg
  ck, msg = checkpoint.read(o.resume)
  if not ck then die(msg) end
  for _, k in ipairs(FIXED) do
    local saved = ck.extra.run[k]
    if given[k] and o[k] ~= saved then
      die(fmt("--%s %s differs from the checkpoint's %s in %s (the checkpoint fixes it)", k,
              tostring(o[k]), tostring(saved), o.resume))
    end
  end
end

-- The run's settings: the command line's, then the checkpoint's, then the
-- defaults (in o unless given). --steps and --time belong to this
-- invocation only.
local SAVED = { "seed", "text", "d", "layers", "heads", "ctx", "batch", "lr", "min-lr", "warmup",
                "decay-frac", "weight-decay", "clip", "eval-every", "sample-len", "experts",
                "top-k", "router", "shared", "coe", "aux-alpha", "bias-gamma" }
local run = {}
for _, k in ipairs(SAVED) do
  local v = o[k]
  if ck and not given[k] and ck.extra.run[k] ~= nil then v = ck.extra.run[k] end
  run[k] = v
end
run.steps, run.time = o.steps, o.time
if run.steps == nil and run.time == nil then run.time = 300 end
local out = o.out or o.resume or "runs/gpt"

-- The length of the schedule: --decay-steps, else --steps, else the
-- resumed run's fixed length, else estimated from the step rate (auto).
local decay_steps, auto_decay = o["decay-steps"] or o.steps, false
if not decay_steps and ck and not ck.extra.auto_decay then decay_steps = ck.extra.decay_steps end
if not decay_steps then
  auto_decay = true
  decay_steps = ck and ck.extra.decay_steps -- nil: the peak rate after warm-up until estimated
end

if run.batch % world ~= 0 then
  die(fmt("--ddp: %d ranks do not divide the batch of %d sequences", world, run.batch))
end
local text = run.text and read_file(run.text) or data.kjv_text()
local ds = data.CharDataset(text, ck and ck.extra.vocab or nil)
local train, val = ds:split(0.9)
local val_T = min(256, run.ctx)
local val_batches = val:fixed_batches(8, 16, val_T)

glia.manual_seed(run.seed)
local model = GPT{ vocab_size = ds.vocab_size, d_model = run.d, n_layers = run.layers,
                   n_heads = run.heads, ctx = run.ctx, moe = GPT.moe_of_run(run) }
-- No weight decay on biases, norms and embeddings (as GPT-2 does).
local opt = optim.AdamW(model:param_groups(run["weight-decay"]), { lr = run.lr, betas = { 0.9, 0.99 } })
local sampler = data.Generator(run.seed, 1)

local step, elapsed0 = 0, 0
if ck then
  step = checkpoint.load(ck, { model = model, optimizer = opt })
  sampler:set_state(ck.extra.sampler)
  elapsed0 = ck.extra.elapsed or 0
  ck = nil
end

-- buckets of 4 MB: the default 25 would hold all of the 12.6 MB default model,
-- whose one all-reduce could then only start once backward is done
local dp = dist and dist.DataParallel(model, { bucket_mb = 4 })
local log_path, svg_path = out .. "/log.csv", out .. "/loss.svg"
local rows, log = {}, nil
if lead then
  local ok, err = checkpoint.make_dir(out)
  if not ok then die(err) end
  rows = read_log(log_path, step)
  -- rewrite the log without the steps after the checkpoint
  local rewrite, err2 = progress.csv(log_path, COLUMNS)
  if not rewrite then die(err2) end
  for _, r in ipairs(rows) do rewrite:write(r) end
  rewrite:close()
  log = progress.csv(log_path, COLUMNS, { append = true })
end
-- ranks other than 0 print nothing and write nothing
local quiet = setmetatable({}, { __index = function() return function() end end })
if not lead then print, log = function() end, quiet end

print(fmt("model: %d parameters (d=%d, %d layers, %d heads, ctx %d, vocab %d)",
          model:num_parameters(), run.d, run.layers, run.heads, run.ctx, ds.vocab_size))
if run.experts > 0 then
  print(fmt("moe: %d experts, top-%d, %s router, %d shared, %d CoE iterations, aux alpha %g, " ..
            "bias gamma %g", run.experts, run["top-k"], run.router, run.shared, run.coe,
            run["aux-alpha"], run["bias-gamma"]))
end
print(fmt("data: %d train and %d validation characters; batch %d x %d; %d threads",
          train:len(), val:len(), run.batch, run.ctx, glia.num_threads()))
if dist then print(fmt("data-parallel: %d ranks x %d sequences", world, run.batch / world)) end
if step > 0 then print(fmt("resumed from %s at step %d", o.resume, step)) end

-- ================================================================ training

-- Linear warm-up to --lr, the peak rate, then a half cosine down to
-- --min-lr over the last --decay-frac of the schedule.
local function lr_at(s)
  if s < run.warmup then return run.lr * s / run.warmup end
  if not decay_steps then return run.lr end
  local start = max(run.warmup, floor(decay_steps * (1 - run["decay-frac"])))
  if s <= start then return run.lr end
  return optim.schedule.cosine{ lr = run.lr, total = max(decay_steps - start, 1),
                                min_lr = run["min-lr"] }(s - start)
end

local function evaluate()
  model:eval()
  local sum = 0
  glia.no_grad(function()
    for _, b in ipairs(val_batches) do sum = sum + model:loss(b[1], b[2]):item() end
  end)
  model:train()
  return sum / #val_batches
end

local prompt = train.data:narrow(1, 1, 1):view(1, 1)

local function sample(n)
  local ids = model:generate(prompt, n, { temperature = 0.8, top_k = 20 })
  return ds:decode(ids:narrow(2, 2, n))
end

-- Tokens per expert of the last training batch, one list per MoE block,
-- with the block's max/mean load.
local function expert_load()
  local parts = {}
  for i, block in ipairs(model.blocks) do
    local l = block.mlp and block.mlp.load and block.mlp:load()
    if l then
      local c, mx, sum = l:totable(), 0, 0
      for _, v in ipairs(c) do mx, sum = max(mx, v), sum + v end
      parts[#parts + 1] = fmt("block %d [%s] max/mean %.2f", i, table.concat(c, " "),
                              mx / max(sum / #c, 1e-9))
    end
  end
  return "expert load: " .. table.concat(parts, "; ")
end

local t_start = clock()

local function save()
  local extra = { run = run, vocab = ds.vocab, sampler = sampler:state(),
                  decay_steps = decay_steps,
                  auto_decay = auto_decay, elapsed = elapsed0 + clock() - t_start }
  local ok, err = checkpoint.save(out, { model = model, optimizer = opt, step = step,
                                         extra = extra })
  if not ok then die(err) end
  -- a picture that cannot be drawn must not end the run
  local ok2, drawn, perr = pcall(write_curve, svg_path, rows)
  if not (ok2 and drawn) then
    io.stderr:write("train_gpt: loss curve: ", tostring(perr or drawn), "\n")
  end
end

-- With --time alone, the schedule ends where the step rate says time runs
-- out (done: the steps this invocation has run).
local function estimate_decay(done)
  if not (auto_decay and run.time and done > 0) then return end
  local spent = clock() - t_start
  decay_steps = step + max(1, floor((run.time - spent) / (spent / done)))
end

-- ================================================================ skip plan

local skip = require "glia.skip"
local plan
if o.plan then
  local ok, p = pcall(skip.parse, run.layers, o.plan)
  if not ok then die((tostring(p):gsub("^[^:]*:%d+: ", ""))) end
  plan = p
  model:set_plan(plan)
  print("plan: " .. tostring(plan))
end

-- The loss of one batch: under a ULS plan the prompt runs every layer,
-- the response the kept ones, and only the response is scored.
local plain_loss = model.loss
function model.loss(m, x, y)
  if not (plan and plan.decode) then return plain_loss(m, x, y) end
  local T = x:size(2)
  return skip.loss(m, x, y, max(1, min(T - 1, floor(T * o["prompt-frac"]))))
end

-- Data-parallel: rank 0's clock decides for every rank whether this step is
-- the last and how long the schedule is (the ranks must agree on both).
local function agree(last)
  if not dist then return last end
  local v = glia.tensor{ last and 1 or 0, decay_steps or -1 }
  dist.broadcast(v, 0)
  decay_steps = v[2] >= 0 and floor(v[2]) or nil
  return v[1] == 1
end

local start_step, finished = step, false
local bar = lead and progress.bar{ total = run.steps, desc = "train", out = io.stdout } or quiet
while not finished do
  if run.steps and step >= run.steps then break end
  if run.time and clock() - t_start >= run.time and not dist then break end
  step = step + 1
  local lr = lr_at(step)
  opt:set_lr(lr)
  opt:zero_grad()
  local x, y = train:batch(run.batch, run.ctx, sampler, rank, world)
  local loss = model:loss(x, y)
  loss:backward()
  if dp then dp:sync() end
  optim.clip_grad_norm(opt, run.clip)
  opt:step()
  nn.schedule_step(model) -- MoE bias balancing (--bias-gamma)
  local loss_v = dist and dist.all_reduce(loss:detach(), "mean"):item() or loss:item()
  local row = { step = step, loss = loss_v, lr = lr, time = elapsed0 + clock() - t_start }
  loss, x, y = nil, nil, nil
  -- This step's activations are garbage now: collecting them here keeps the
  -- peak at one step's worth (a full cycle over a small heap costs ~1 ms).
  collectgarbage()
  bar:update(step, { loss = row.loss, lr = lr })
  local done = step - start_step
  if done == 20 then estimate_decay(done) end
  local last = (run.steps and step >= run.steps) or (run.time and clock() - t_start >= run.time)
  if step % run["eval-every"] == 0 or last then estimate_decay(done) end
  last = agree(last)
  finished = last
  if lead and (step % run["eval-every"] == 0 or last) then
    row.val_loss = evaluate()
    bar:print(fmt("step %d: train loss %.3f, val loss: %.3f  (%.0f s)", step, bar:loss(),
                  row.val_loss, row.time))
    if run.experts > 0 then bar:print("  " .. expert_load()) end
    if run["sample-len"] > 0 and not last then
      bar:print("  | " .. sample(run["sample-len"]):gsub("\n", "\n  | "))
    end
  end
  log:write(row)
  rows[#rows + 1] = row
  if row.val_loss then save() end
end
bar:close()
log:close()
if step == start_step and lead then save() end -- nothing ran: still leave a checkpoint

print(fmt("checkpoint: %s   log: %s   curve: %s", checkpoint.path(out), log_path, svg_path))
print(fmt("%d steps in %.0f s this run (%.0f tokens/s)", step - start_step, clock() - t_start,
          (step - start_step) * run.batch * run.ctx / max(1e-9, clock() - t_start)))
if run["sample-len"] > 0 and lead then
  print("sample:")
  print(sample(max(run["sample-len"], 400)))
end

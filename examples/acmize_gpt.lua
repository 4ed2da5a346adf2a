-- examples/acmize_gpt.lua -- turns the MLPs of a GPT trained by
-- examples/train_gpt.lua into Adaptive Computation Modules (glia.acm): N
-- learners per MLP and a gate choosing per character how many run, by the
-- three phases of glia.acm.convert (distillation from the teacher's own
-- activations, gate pre-training, fine-tuning at a compute budget).
--
--   glia examples/acmize_gpt.lua runs/gpt --out runs/acm --budget 0.5
--   glia examples/sample.lua runs/acm --prompt "And God said" --svg sample.svg
--
-- The output directory gets phase1..phase3 (checkpoints: an interrupted run
-- resumes where it stopped), log.csv, and the converted model's own
-- checkpoint (what sample.lua reads: the GPT's config and vocabulary, and
-- the ACM settings). It prints the validation loss of the teacher, of the
-- ACMized model with its gates (and the fraction of the MLPs' compute they
-- ran, as glia.acm measured it), and at every fixed k.
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia = require "glia"
local cli = require "glia.cli"
local acm = require "glia.acm"

local fmt = string.format

local USAGE = [[
usage: glia examples/acmize_gpt.lua [DIR] [options]
  DIR                the teacher: a checkpoint directory of train_gpt.lua (default runs/gpt)
  --out DIR          where the conversion goes (default runs/acm)
  --learners N       learners per MLP (4)
  --budget F         phase 3's target fraction of the MLPs' compute, in (0, 1] (0.5)
  --steps1 N         distillation steps (300)
  --steps2 N         gate pre-training steps (100)
  --steps3 N         fine-tuning steps (300)
  --lr3 X            fine-tuning learning rate (3e-4)
  --batch N          sequences per step (16)
  --seed N           seed of the ACMs' initialization and of the batches (1)
  --threads N        compute threads
]]

local o = cli.parse(arg or {}, {
  options = {
    out = { "string", "runs/acm" },
    learners = { "integer", 4, min = "positive" },
    budget = { "number", 0.5 },
    steps1 = { "integer", 300 },
    steps2 = { "integer", 100 },
    steps3 = { "integer", 300 },
    lr3 = { "number", 3e-4 },
    batch = { "integer", 16, min = "positive" },
    seed = { "integer", 1 },
    threads = { "integer", min = "positive" },
  },
  min = "non-negative",
  positional = 1,
}, USAGE)
if o.threads then glia.set_num_threads(o.threads) end

local M = require "examples.gpt_acm"

local teacher_dir = o[1] or "runs/gpt"
local model, run, vocab = M.load_teacher(teacher_dir)
if not model then
  io.stderr:write("acmize_gpt: ", run, "\n")
  os.exit(1)
end
glia.manual_seed(o.seed)
local D = M.data(run, vocab, o.batch, o.seed)
local base = M.evaluate(model, D.val_batches)
print(fmt("teacher %s: d %d, %d layers, MLP %d -> %d -> %d; val loss %.4f", teacher_dir, run.d,
          run.layers, run.d, 4 * run.d, run.d, base))

local conv = acm.convert(model, {
  learners = o.learners, batch = D.batch, out = o.out,
  phase1 = { steps = o.steps1 }, phase2 = { steps = o.steps2 },
  phase3 = { steps = o.steps3, budget = o.budget, lr = o.lr3 },
})
if conv.prefix_errors_last then
  print("relative distillation error by k: " .. table.concat(
    (function() local s = {} for k, e in ipairs(conv.prefix_errors_last) do
      s[k] = fmt("k=%d %.4f", k - 1, e) end return s end)(), ", "))
end
local loss, frac = M.evaluate(model, D.val_batches, conv)
print(fmt("ACM (gates, budget %.2f): val loss %.4f at %.1f%% of the MLPs' compute", o.budget, loss,
          100 * frac))
for k = 0, o.learners do
  conv:set_mode("gated", k)
  print(fmt("  every token at k = %d: val loss %.4f", k, (M.evaluate(model, D.val_batches))))
end
conv:set_mode("gated")
local ok, err = M.save(o.out, model, run, vocab, o.learners)
if not ok then
  io.stderr:write("acmize_gpt: ", err, "\n")
  os.exit(1)
end
print(fmt("saved %s; sample it with: glia examples/sample.lua %s --svg sample.svg", ok, o.out))

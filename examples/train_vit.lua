-- examples/train_vit.lua -- trains the small ViT of models/vit.lua on
-- Fashion-MNIST with Adam (cosine decay), evaluating on the test set after
-- each epoch, with softmax or SLA attention and LayerNorm, a plain
-- BatchNorm or PRepBN:
--
--   bin/glia examples/train_vit.lua [--attention softmax|sla] [--norm layer|batch|prepbn]
--        [--epochs 3] [--batch 128] [--lr 2e-3] [--seed 0] [--train N] [--fold]
--        [--out DIR] [--data DIR]
--
-- With --norm prepbn the LayerNorm hands over to RepBN during training:
-- lam stays 1 for the first tenth of the steps, then falls linearly to 0
-- by 70% of them, so the last 30% train the RepBN alone (the model that is
-- evaluated and folded). nn.schedule_step(model) advances it once per
-- optimizer step.
--
-- --fold (with --norm batch or prepbn) then folds every norm into its
-- neighbouring linear layer (nn.fold) and prints the test accuracy before
-- and after, the largest difference of the logits over the test set, and
-- the eval throughput (images/s) of both models.
--
-- The last line printed is `test accuracy: NN.N%` (before folding). With
-- --out, DIR receives train_log.csv (one line per step and one per epoch)
-- and loss_curve.svg. --train N trains on the first N images only (for
-- short runs). The data comes from Debian's dataset-fashion-mnist unless
-- --data names a directory holding the four IDX files.
local script_dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/../?.lua;" .. package.path

local glia     = require "glia"
local nn       = require "glia.nn"
local optim    = require "glia.optim"
local data     = require "glia.data"
local cli      = require "glia.cli"
local ViT      = require "models.vit"
local fmnist   = require "examples.fmnist"

local fmt, floor, min = string.format, math.floor, math.min
local stdout, stderr = io.stdout, io.stderr

-- ========================================================== arguments

local USAGE = [[
usage: glia examples/train_vit.lua [options]
  --attention A  softmax (the default) or sla
  --norm N       layer (the default), batch or prepbn
  --epochs N     passes over the training set (3)
  --batch N      batch size (128)
  --lr X         Adam's peak learning rate (2e-3), decaying along a half cosine
  --seed N       seed of the initialization and of the shuffling (0)
  --train N      train on the first N images only (all)
  --fold         after training, fold the norms and compare (norm batch or prepbn)
  --out DIR      write DIR/train_log.csv and DIR/loss_curve.svg
  --data DIR     read the IDX files from DIR instead of /usr/share/datasets/fashion-mnist
]]

local opts = cli.parse(arg or {}, {
  options = {
    attention = { { "softmax", "sla" }, "softmax" },
    norm      = { { "layer", "batch", "prepbn" }, "layer" },
    epochs    = { "integer", 3 },
    batch     = { "integer", 128 },
    lr        = { "number", 2e-3 },
    seed      = { "integer", 0, min = "non-negative" },
    train     = { "integer" },
    fold      = { "flag" },
    out       = { "string" },
    data      = { "string" },
  },
  min = "positive",
}, USAGE)

local function die(msg)
  stderr:write("train_vit: ", msg, "\n")
  os.exit(1)
end

if opts.fold and opts.norm == "layer" then
  die("--fold needs --norm batch or prepbn: a LayerNorm has no fixed affine map to fold")
end

-- ============================================================== setup

local x_train, y_train, x_test, y_test = fmnist.load(opts, die)

local loader = data.DataLoader(data.TensorDataset(x_train, y_train),
                               { batch_size = opts.batch, shuffle = true, seed = opts.seed })
local total = opts.epochs * loader:len()

glia.manual_seed(opts.seed)
local model = ViT{ attention = opts.attention, norm = opts.norm,
                   warmup = floor(total / 10), steps = math.max(1, floor(total * 0.6)) }
local opt = optim.Adam(model:parameters(), { lr = opts.lr })
local lr_at = optim.schedule.cosine{ lr = opts.lr, total = total }

-- ============================================================ training

local acc = fmnist.train{
  model = model, opt = opt, loader = loader, lr_at = lr_at, opts = opts, die = die,
  n_train = x_train:size(1), x_test = x_test, y_test = y_test, after_step = nn.schedule_step,
  title = fmt("ViT (%s attention, %s norm) on Fashion-MNIST", opts.attention, opts.norm),
}

-- ============================================================= folding

-- The logits of m over x in batches, and the images per second it ran at.
local EVAL_BATCH = 500
local function logits_of(m, x)
  local parts, t = {}, glia.clock()
  glia.no_grad(function()
    for i = 1, x:size(1), EVAL_BATCH do
      parts[#parts + 1] = m(x:narrow(1, i, min(EVAL_BATCH, x:size(1) - i + 1)))
    end
  end)
  return glia.cat(parts, 1), x:size(1) / (glia.clock() - t)
end

if opts.fold then
  model:eval()
  local folded = nn.fold(model)
  logits_of(folded, x_test:narrow(1, 1, min(EVAL_BATCH, x_test:size(1)))) -- warm up
  local before, ips = logits_of(model, x_test)
  local after, ips_folded = logits_of(folded, x_test)
  local _, acc_folded = folded:evaluate(x_test, y_test)
  stdout:write(fmt("folded: test accuracy %.2f%% before, %.2f%% after; largest logit difference %.2e\n",
                   acc * 100, acc_folded * 100, (after - before):abs():max():item()))
  stdout:write(fmt("eval throughput: %.0f images/s unfolded, %.0f images/s folded\n", ips,
                   ips_folded))
end

stdout:write(fmt("test accuracy: %.1f%%\n", acc * 100))

-- examples/train_fmnist.lua -- trains the mlp_fmnist workload: a
-- 784-512-256-10 ReLU perceptron (models/mlp.lua) on Fashion-MNIST with
-- Adam, evaluating on the test set after each epoch.
--
--   bin/glia examples/train_fmnist.lua [--epochs 5] [--batch 128] [--lr 1e-3]
--                                      [--schedule cosine] [--seed 0]
--                                      [--out DIR] [--data DIR] [--resume DIR]
--                                      [--drop_last]
--   mpirun -np 2 --bind-to core -x GLIA_NUM_THREADS=1 bin/glia examples/train_fmnist.lua --ddp
--
-- With --out, DIR/checkpoint.safetensors is written (atomically) after each
-- epoch; --resume DIR continues from it (more --epochs, any number of
-- ranks). --ddp trains data-parallel over mpirun's ranks: --batch is the
-- global batch, split over the ranks, and rank 0 alone prints, logs,
-- evaluates and checkpoints. The ranks must take equal shares of every
-- batch, so --ddp drops the last partial global batch of each epoch (60000 %
-- 128 = 96 images at the defaults): its epoch is not the single-process one
-- unless that drops it too, with --drop_last.
--
-- The learning rate starts at --lr and by default decays along a half
-- cosine to 0 at the last step: with the workload's constant rate (as in
-- bench/mlp_fmnist.lua) the test accuracy after 5 epochs wanders between
-- 87.5% and 88.0% from seed to seed, in PyTorch as in glia; the decay
-- settles it at 88.1-88.5%.
--
-- The data comes from Debian's dataset-fashion-mnist unless --data names a
-- directory holding the four IDX files under their usual names. A progress
-- bar goes to stderr; each epoch's summary goes to stdout, and the last line
-- is `test accuracy: NN.N%`. With --out, DIR receives the training log
-- (train_log.csv: one line per step, and one per epoch with the test
-- figures) and the loss curve (loss_curve.svg).
local script_dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = script_dir .. "/../?.lua;" .. package.path

local glia     = require "glia"
local optim    = require "glia.optim"
local data     = require "glia.data"
local cli      = require "glia.cli"
local checkpoint = require "glia.checkpoint"
local MLP      = require "models.mlp"
local fmnist   = require "examples.fmnist"

local fmt = string.format
local stdout, stderr = io.stdout, io.stderr

-- ========================================================== arguments

local USAGE = [[
usage: glia examples/train_fmnist.lua [options]
  --epochs N    passes over the training set (5)
  --batch N     batch size (128)
  --lr X        Adam's learning rate (1e-3)
  --schedule S  cosine (the default: decay to 0 over the run) or constant
  --seed N      seed of the initialization and of the shuffling (0)
  --out DIR     write DIR/train_log.csv and DIR/loss_curve.svg
  --data DIR    read the IDX files from DIR instead of /usr/share/datasets/fashion-mnist
  --resume DIR  continue the run checkpointed in DIR (writing to DIR unless --out)
  --ddp         data-parallel over the ranks of mpirun (drops the last partial
                batch of each epoch: the ranks split every batch equally)
  --drop_last   drop the last partial batch of each epoch in one process too:
                the same epoch as --ddp's
]]

-- Every number is positive, but the seed may be 0.
local opts = cli.parse(arg or {}, {
  options = {
    epochs   = { "integer", 5 },
    batch    = { "integer", 128 },
    lr       = { "number", 1e-3 },
    schedule = { { "cosine", "constant" }, "cosine" },
    seed     = { "integer", 0, min = "non-negative" },
    out      = { "string" },
    data     = { "string" },
    resume   = { "string" },
    ddp      = { "flag" },
    drop_last = { "flag" },
  },
  min = "positive",
}, USAGE)

-- ============================================================== setup

local function die(msg)
  stderr:write("train_fmnist: ", msg, "\n")
  os.exit(1)
end

local dist = opts.ddp and require "glia.distributed"
local rank, world = 0, 1
if dist then rank, world = dist.init() end
if opts.batch % world ~= 0 then
  die(fmt("--ddp: %d ranks do not divide the batch of %d images", world, opts.batch))
end
opts.out = opts.out or opts.resume

local x_train, y_train, x_test, y_test = fmnist.load(opts, die)

glia.manual_seed(opts.seed)
local model = MLP{ sizes = { x_train:size(2), 512, 256, 10 } }
local opt = optim.Adam(model:parameters(), { lr = opts.lr })
local loader = data.DataLoader(data.TensorDataset(x_train, y_train),
                               { batch_size = opts.batch, shuffle = true, seed = opts.seed,
                                 drop_last = world > 1 or opts.drop_last or false, rank = rank, world_size = world })
local epoch0, step0 = 0, 0
if opts.resume then
  local ck, msg = checkpoint.read(opts.resume)
  if not ck then die(msg) end
  step0 = checkpoint.load(ck, { model = model, optimizer = opt })
  epoch0 = ck.extra.epoch
  loader:set_epoch(epoch0 + 1)
end
local dp = dist and dist.DataParallel(model)
local lr_at = opts.schedule == "cosine"
              and optim.schedule.cosine{ lr = opts.lr, total = opts.epochs * loader:len() }
              or optim.schedule.constant(opts.lr)

-- ============================================================ training

local acc = fmnist.train{
  model = model, opt = opt, loader = loader, lr_at = lr_at, opts = opts, die = die,
  epoch0 = epoch0, step0 = step0, dp = dp, dist = dist, lead = rank == 0,
  after_epoch = opts.out and function(epoch, step)
    local ok, err = checkpoint.save(opts.out, { model = model, optimizer = opt, step = step,
                                                extra = { epoch = epoch } })
    if not ok then die(err) end
  end,
  n_train = x_train:size(1), x_test = x_test, y_test = y_test,
  title = fmt("MLP %s on Fashion-MNIST", table.concat(model.sizes, "-")),
}

if acc then stdout:write(fmt("test accuracy: %.1f%%\n", acc * 100)) end

-- examples/fmnist.lua -- what the Fashion-MNIST examples (train_fmnist,
-- train_vit) share: loading the splits, and the training loop with its
-- progress bar, CSV log, per-epoch test figures and loss curve.
local glia     = require "glia"
local nn       = require "glia.nn"
local data     = require "glia.data"
local progress = require "glia.progress"
local plot     = require "glia.plot"

local fmt = string.format
local stdout = io.stdout

local M = {}

-- The training and test splits from opts.data (a directory holding the four
-- IDX files) or Debian's dataset-fashion-mnist; only the first opts.train
-- training images when that is set. die(message) on failure. Each split's
-- scratch copies go back to the system before the next large allocation.
function M.load(opts, die)
  local function split(name)
    local ok, x, y = pcall(data.fashion_mnist, name, { dir = opts.data })
    if not ok then die(tostring(x)) end
    collectgarbage()
    glia.trim()
    return x, y
  end
  local x_train, y_train = split("train")
  local x_test, y_test = split("test")
  if opts.train and opts.train < x_train:size(1) then
    x_train, y_train = x_train:narrow(1, 1, opts.train), y_train:narrow(1, 1, opts.train)
  end
  return x_train, y_train, x_test, y_test
end

-- t: model, opt, loader (of n_train images), lr_at, opts, die, x_test, y_test,
-- title, and after_step (optional). Trains model for opts.epochs over loader
-- with opt, the learning rate of step s being lr_at(s), calling
-- after_step(model) after each optimizer step; evaluates on (x_test, y_test)
-- after each epoch. With
-- opts.out, writes DIR/train_log.csv and DIR/loss_curve.svg (titled title).
-- Prints a header, one line per epoch and no more; returns the last test
-- accuracy (0..1). die(message) on a file error.
--
-- Resuming and data-parallel training (train_fmnist --resume, --ddp): t.epoch0
-- and t.step0 are the epochs and steps already done (the log is then
-- appended to); t.after_epoch(epoch, step), if given, runs after each
-- epoch's evaluation (to save a checkpoint). With t.dp (a
-- glia.distributed.DataParallel around model) each step waits for the
-- averaged gradients before the optimizer step, the logged loss is the mean
-- over the ranks, and only rank 0 (t.lead, default true) prints, logs and
-- evaluates (the others return nil).
function M.train(t)
  local model, opt, loader, opts, die = t.model, t.opt, t.loader, t.opts, t.die
  local lead = t.lead ~= false
  local epoch0, log = t.epoch0 or 0, nil
  if opts.out and lead then
    os.execute("mkdir -p '" .. opts.out:gsub("'", "'\\''") .. "'")
    local err
    log, err = progress.csv(opts.out .. "/train_log.csv",
                            { "epoch", "step", "lr", "loss", "test_loss", "test_acc", "time" },
                            { append = epoch0 > 0 })
    if not log then die(err) end
  end
  if lead then stdout:write(fmt("Fashion-MNIST: %d training and %d test images; %s\n", t.n_train,
                   t.x_test:size(1), tostring(model):match("^[^\n]*"))) end

  local steps, losses = {}, {}               -- per step, for the loss curve
  local test_steps, test_losses = {}, {}     -- per epoch
  local step, t0, acc = t.step0 or 0, glia.clock(), 0
  local quiet = setmetatable({}, { __index = function() return function() end end })
  for epoch = epoch0 + 1, opts.epochs do
    local bar = lead and progress.bar{ total = loader:len(), desc = fmt("epoch %d/%d", epoch, opts.epochs) }
                or quiet
    local loss_sum, nb = 0, 0
    for xb, yb in loader:iter() do
      step = step + 1
      local lr = t.lr_at(step)
      local loss = nn.F.cross_entropy(model(xb), yb)
      opt:zero_grad()
      loss:backward()
      if t.dp then t.dp:sync() end
      opt:set_lr(lr)
      opt:step()
      if t.after_step then t.after_step(model) end
      local l = t.dp and t.dist.all_reduce(loss:detach(), "mean"):item() or loss:item()
      nb, loss_sum = nb + 1, loss_sum + l
      steps[step], losses[step] = step, l
      bar:update(nb, { loss = l })
      if log then
        log:write{ epoch = epoch, step = step, loss = l, lr = lr, time = glia.clock() - t0 }
      end
    end
    bar:close()
    if not lead then goto next_epoch end
    local test_loss
    test_loss, acc = model:evaluate(t.x_test, t.y_test)
    test_steps[epoch], test_losses[epoch] = step, test_loss
    local elapsed = glia.clock() - t0
    if log then
      log:write{ epoch = epoch, step = step, test_loss = test_loss, test_acc = acc, time = elapsed }
    end
    stdout:write(fmt("epoch %d/%d  train loss %.4f  test loss %.4f  test acc %.1f%%  %.1f s\n",
                     epoch, opts.epochs, loss_sum / nb, test_loss, acc * 100, elapsed))
    stdout:flush()
    if t.after_epoch then t.after_epoch(epoch, step) end
    ::next_epoch::
  end

  if log then -- the curve shows this invocation's steps
    log:close()
    local ok, err = plot.loss_curve(opts.out .. "/loss_curve.svg", {
      title = t.title, xlabel = "step", ylabel = "cross entropy",
      series = {
        { name = "train", x = steps, y = losses, smooth = 0.95 },
        { name = "test", x = test_steps, y = test_losses },
      },
    })
    if not ok then die(err) end
  end
  return lead and acc or nil
end

return M

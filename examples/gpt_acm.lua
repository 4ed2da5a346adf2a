-- examples/gpt_acm.lua -- what examples/acmize_gpt.lua, acm_study.lua and
-- sample.lua share: loading a train_gpt.lua checkpoint as the teacher, its
-- data as deterministic batches, the validation loss (with the measured
-- compute fraction of an ACMized model), and the converted model's
-- checkpoint.
local glia = require "glia"
local data = require "glia.data"
local checkpoint = require "glia.checkpoint"
local GPT = require "models.gpt"

local M = {}

-- The teacher GPT of a train_gpt.lua checkpoint, its run config and vocabulary.
function M.load_teacher(dir)
  local ck, msg = checkpoint.read(dir)
  if not ck then return nil, msg end
  local run, vocab = ck.extra.run, ck.extra.vocab
  if type(run) ~= "table" or type(vocab) ~= "string" then
    return nil, dir .. " holds no model config and vocabulary: was it written by train_gpt.lua?"
  end
  local model = GPT{ vocab_size = #vocab, d_model = run.d, n_layers = run.layers,
                     n_heads = run.heads, ctx = run.ctx, moe = GPT.moe_of_run(run) }
  checkpoint.load(ck, { model = model, rng = false })
  model:eval()
  return model, run, vocab
end

-- The data of the teacher's run: train and validation splits, 8 fixed
-- validation batches, and batch(step, phase), a function of its arguments.
function M.data(run, vocab, B, seed)
  local ds = data.CharDataset(data.kjv_text(), vocab)
  local train, val = ds:split(0.9)
  local T = run.ctx
  local function batch(step, phase)
    return train:batch(B, T, data.Generator(seed, phase * 1000003 + step))
  end
  return { ds = ds, train = train, val = val, batch = batch,
           val_batches = val:fixed_batches(8, 16, math.min(256, T)) }
end

-- Mean validation loss, and the mean measured compute fraction when conv is given.
function M.evaluate(model, batches, conv)
  model:eval()
  local sum, frac = 0, 0
  glia.no_grad(function()
    for _, b in ipairs(batches) do
      sum = sum + model:loss(b[1], b[2]):item()
      if conv then frac = frac + conv:compute_fraction() end
    end
  end)
  return sum / #batches, conv and frac / #batches
end

-- The converted model's checkpoint: what sample.lua needs to rebuild it.
function M.save(dir, model, run, vocab, learners)
  return checkpoint.save(dir, { model = model, step = 0,
                                extra = { run = run, vocab = vocab, acm = { learners = learners } } })
end

return M


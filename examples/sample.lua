-- examples/sample.lua -- generates text from a checkpoint written by
-- examples/train_gpt.lua (the model's shape and vocabulary come from it).
--
--   glia examples/sample.lua runs/gpt --prompt "And God said" --length 500
--   glia examples/sample.lua runs/gpt --temperature 0 --length 200   # greedy
--
-- Tokens are printed as they are generated. Characters of the prompt that
-- the vocabulary lacks are an error.
--
-- A model ACMized by examples/acmize_gpt.lua samples the same way; with
-- --svg PATH the sample is also drawn as a picture, each character on a
-- background as dark as the number of learners its MLPs ran (the mean over
-- the layers): where the compute went.
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia       = require "glia"
local data       = require "glia.data"
local checkpoint = require "glia.checkpoint"
local cli        = require "glia.cli"
local GPT        = require "models.gpt"
local acm        = require "glia.acm"
local plot       = require "glia.plot"

local USAGE = [[
usage: glia examples/sample.lua [DIR] [options]
  DIR                the checkpoint directory (default runs/gpt)
  --prompt TEXT      the text to continue (default: a new line)
  --length N         characters to generate (500)
  --temperature X    softmax temperature; 0 picks the likeliest character (0.8)
  --top-k N          sample among the N likeliest characters only (default: all)
  --seed N           seed of the sampling (default: the checkpoint's RNG state)
  --threads N        compute threads
  --svg PATH         an ACMized model: draw the sample coloured by learners run
]]

local function die(msg)
  io.stderr:write("sample: ", msg, "\n")
  os.exit(1)
end

-- Every number is non-negative; --top-k and --threads are positive.
local o = cli.parse(arg or {}, {
  options = {
    prompt      = { "string", "\n" },
    length      = { "integer", 500 },
    temperature = { "number", 0.8 },
    ["top-k"]   = { "integer", min = "positive" },
    seed        = { "integer" },
    threads     = { "integer", min = "positive" },
    svg         = { "string" },
  },
  min = "non-negative",
  positional = 1, -- DIR
}, USAGE)
local dir = o[1] or "runs/gpt"
if o.threads then glia.set_num_threads(o.threads) end

local ck, msg = checkpoint.read(dir)
if not ck then die(msg) end
local run, vocab = ck.extra.run, ck.extra.vocab
if type(run) ~= "table" or type(vocab) ~= "string" then
  die(dir .. " holds no model config and vocabulary: was it written by train_gpt.lua?")
end
local model = GPT{ vocab_size = #vocab, d_model = run.d, n_layers = run.layers,
                   n_heads = run.heads, ctx = run.ctx, moe = GPT.moe_of_run(run) }
local conv = ck.extra.acm and acm.attach(model, { learners = ck.extra.acm.learners })
if o.svg and not conv then die("--svg needs an ACMized model (examples/acmize_gpt.lua)") end
checkpoint.load(ck, { model = model })
if o.seed then glia.manual_seed(o.seed) end

local ds = data.CharDataset(vocab, vocab) -- encode/decode only
local prompt = o.prompt
local ok, ids = pcall(ds.encode, ds, prompt)
if not ok or #prompt == 0 then
  die("the prompt must be non-empty, with characters from the vocabulary: "
      .. string.format("%q", vocab))
end

-- learners[i]: the mean k over the layers when character i was the input;
-- each on_token call follows the forward over the characters before it
local chars, learners = {}, {}
local function note_compute()
  if not conv then return end
  local n = conv.acms[1].last.k:size(1)
  local first = #learners + 1
  for j = n, 1, -1 do -- the last n inputs, the newest at n
    local i = #chars - (n - j)
    if i >= first then
      local s = 0
      for _, a in ipairs(conv.acms) do s = s + a.last.k[j] end
      learners[i] = s / #conv.acms
    end
  end
end
for c in prompt:gmatch(".") do chars[#chars + 1] = c end
io.write(prompt)
model:generate(ids:view(1, #prompt), o.length, {
  temperature = o.temperature,
  top_k = o["top-k"],
  on_token = function(id)
    note_compute()
    local c = ds:decode(id)
    chars[#chars + 1] = c
    io.write(c)
    io.flush()
  end,
})
io.write("\n")
if o.svg then
  local sum, n = 0, 0
  for _, v in pairs(learners) do sum, n = sum + v, n + 1 end
  local ok, err = plot.colored_text(o.svg, {
    chars = chars, values = learners, vmax = ck.extra.acm.learners,
    title = string.format("%s: learners run per character (mean over %d layers; %.2f of %d on average)",
                          dir, #conv.acms, sum / math.max(n, 1), ck.extra.acm.learners),
    legend = "learners run (0 = the MLP skipped)" })
  if not ok then die(err) end
  print("picture: " .. o.svg)
end
print(string.format("-- %s, step %d", ck.path, ck.step))

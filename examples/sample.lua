-- examples/sample.lua -- generates text from a checkpoint written by
-- examples/train_gpt.lua (the model's shape and vocabulary come from it).
--
--   glia examples/sample.lua runs/gpt --prompt "And God said" --length 500
--   glia examples/sample.lua runs/gpt --temperature 0 --length 200   # greedy
--
-- Tokens are printed as they are generated. Characters of the prompt that
-- the vocabulary lacks are an error.
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia       = require "glia"
local data       = require "glia.data"
local checkpoint = require "glia.checkpoint"
local cli        = require "glia.cli"
local GPT        = require "models.gpt"

local USAGE = [[
usage: glia examples/sample.lua [DIR] [options]
  DIR                the checkpoint directory (default runs/gpt)
  --prompt TEXT      the text to continue (default: a new line)
  --length N         characters to generate (500)
  --temperature X    softmax temperature; 0 picks the likeliest character (0.8)
  --top-k N          sample among the N likeliest characters only (default: all)
  --seed N           seed of the sampling (default: the checkpoint's RNG state)
  --threads N        compute threads
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
checkpoint.load(ck, { model = model })
if o.seed then glia.manual_seed(o.seed) end

local ds = data.CharDataset(vocab, vocab) -- encode/decode only
local prompt = o.prompt
local ok, ids = pcall(ds.encode, ds, prompt)
if not ok or #prompt == 0 then
  die("the prompt must be non-empty, with characters from the vocabulary: "
      .. string.format("%q", vocab))
end

io.write(prompt)
model:generate(ids:view(1, #prompt), o.length, {
  temperature = o.temperature,
  top_k = o["top-k"],
  on_token = function(id)
    io.write(ds:decode(id))
    io.flush()
  end,
})
io.write("\n")
print(string.format("-- %s, step %d", ck.path, ck.step))

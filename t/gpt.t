-- t/gpt.t -- models/gpt.lua, glia.checkpoint and the GPT examples: the
-- default shape's parameter count, forward with and without the KV cache,
-- generation (greedy against a cache-free reference, top-k, temperature,
-- past the context), config errors, checkpoint round trips and failures,
-- and bit-identical resume: 20 steps straight == 10 steps, save, load into
-- fresh objects, 10 steps -- in this process and across processes through
-- examples/train_gpt.lua, whose checkpoint examples/sample.lua then reads.
--
-- Tiny models on a tiny generated text keep it to seconds under the
-- sanitizers. Tolerances: cached and uncached logits agree to 1e-4 (f32
-- sums in a different order); resumed runs must agree exactly.
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local glia = require "glia"
local optim = require "glia.optim"
local data = require "glia.data"
local checkpoint = require "glia.checkpoint"
local GPT = require "models.gpt"

local SEED = 4321
t.diag("seed " .. SEED)
glia.manual_seed(SEED)

local TINY = { vocab_size = 11, d_model = 16, n_layers = 2, n_heads = 2, ctx = 12 }

local tmp = os.tmpname()
os.remove(tmp)
local function path(name) return tmp .. "-" .. name end

local function same(a, b) -- exactly equal tensors of the same shape
  return table.concat(a:shape(), ",") == table.concat(b:shape(), ",")
     and a:ne(b):to("f32"):sum():item() == 0
end

local function all_same(list_a, list_b)
  if #list_a ~= #list_b then return false end
  for i = 1, #list_a do
    if not same(list_a[i], list_b[i]) then return false end
  end
  return true
end

local function tiny()
  glia.manual_seed(SEED)
  return GPT(TINY)
end

-- ================================================================ model

t.is(GPT{ vocab_size = 73 }:num_parameters(), 3262537,
     "the default shape has bench/torch_ref.py's GPT parameter count (3,262,537)")
t.is(GPT{ vocab_size = 73, tie = true }:num_parameters(), 3262537 - 73 * 256,
     "tying the head to the token embedding drops the head's weight")

local m = tiny()
local idx = glia.randint(1, 12, 3, 7)
local logits = m(idx)
t.is(table.concat(logits:shape(), ","), "3,7,11", "forward maps ids {B,T} to logits {B,T,V}")
t.error_like(function() m(glia.randint(1, 12, 1, 13)) end,
             "positions 1%.%.13 exceed the context of 12",
             "a sequence longer than the context is an error naming the positions")
t.error_like(function() GPT{ vocab_size = 5, d_model = 10, n_heads = 3 } end,
             "d_model 10 is not a multiple of n_heads 3", "heads must divide d_model")
t.error_like(function() GPT{ vocab_size = 5, layers = 2 } end, "models.gpt: unknown option 'layers' %(known: vocab_size",
             "an unknown config field is an error")
t.error_like(function() GPT{} end, "vocab_size must be a positive integer",
             "vocab_size is required")

-- Logits of every position, fed one at a time through the caches.
local cached = glia.no_grad(function()
  m:eval()
  local caches, out = m:new_caches(3), {}
  out[1] = m:forward(idx:narrow(2, 1, 3), caches, 0)
  for p = 4, 7 do out[#out + 1] = m:forward(idx:narrow(2, p, 1), caches, p - 1) end
  m:train()
  return glia.cat(out, 2)
end)
t.near(cached, logits, 1e-4, "forward through the KV cache matches the full forward")

-- ================================================================ generation

-- Greedy decoding by recomputing the whole sequence for every token.
local function greedy_reference(model, prompt, n)
  return glia.no_grad(function()
    local seq = prompt
    for _ = 1, n do
      local lg = model(seq)
      seq = glia.cat({ seq, lg:select(2, seq:size(2)):argmax(-1, true) }, 2)
    end
    return seq
  end)
end

local prompt = glia.randint(1, 12, 2, 3)
local g = m:generate(prompt, 9, { temperature = 0 })
t.ok(same(g, greedy_reference(m, prompt, 9)),
     "greedy generation with the cache equals recomputing the full sequence per token")
t.ok(same(g:narrow(2, 1, 3), prompt), "generation returns the prompt followed by the new tokens")
t.ok(same(m:generate(prompt, 9, { temperature = 1.3, top_k = 1 }), g),
     "top_k = 1 is greedy whatever the temperature")
t.ok(m.training, "generate leaves the module in the mode it found it in")

glia.manual_seed(9)
local s1 = m:generate(prompt, 9, { temperature = 0.9, top_k = 4 })
glia.manual_seed(9)
local s2 = m:generate(prompt, 9, { temperature = 0.9, top_k = 4 })
t.ok(same(s1, s2), "sampling is reproducible under glia.manual_seed")

-- The first sampled token is always among the top_k logits of the prompt.
local top = {}
do
  local lg = glia.no_grad(function() return m(prompt:narrow(1, 1, 1)) end)
  local _, ids = lg:select(2, 3):topk(3, -1)
  for _, id in ipairs(t.flat(ids, {})) do top[id] = true end
end
local inside = true
for _ = 1, 40 do
  local id = m:generate(prompt:narrow(1, 1, 1), 1, { temperature = 2, top_k = 3 })[1][4]
  inside = inside and top[id] == true
end
t.ok(inside, "top_k sampling draws only among the k likeliest tokens")

local long = m:generate(prompt, 30, { temperature = 1 })
local lo, hi = long:to("f32"):min():item(), long:to("f32"):max():item()
t.ok(long:size(2) == 33 and lo >= 1 and hi <= 11,
     "generation runs past the context (caches restart on the last half) with valid ids")
t.error_like(function() m:generate(prompt, 2, { top_k = 0 }) end,
             "top_k must be a positive integer",
             "top_k must be positive")

-- ================================================================ checkpoint

local dir = path("ck")
local opt = optim.AdamW(m:parameters(), { lr = 1e-2 })
m:loss(idx, idx):backward()
opt:step()
local extra = { run = { d = 16, name = "tiny", lr = 1e-3, flag = true }, vocab = "ab\ncd\"e",
                big = 2 ^ 40 + 1 }
t.ok(checkpoint.save(dir, { model = m, optimizer = opt, step = 7, extra = extra }),
     "checkpoint.save creates the directory and writes the file")
local seed, offset = glia.rng_state()
glia.randn(10)

local m2 = GPT(TINY)
local opt2 = optim.AdamW(m2:parameters(), { lr = 1e-2 })
local step, ex = checkpoint.load(dir, { model = m2, optimizer = opt2 })
t.is(step, 7, "checkpoint.load returns the step")
t.ok(ex.run.d == 16 and ex.run.name == "tiny" and ex.run.lr == 1e-3 and ex.run.flag == true
     and ex.vocab == extra.vocab and ex.big == 2 ^ 40 + 1,
     "extra comes back with its nesting, numbers, strings (newlines, quotes) and booleans")
t.ok(all_same(m:parameters(), m2:parameters()), "the model's parameters are restored exactly")
t.ok(same(opt2.state[1][1].exp_avg, opt.state[1][1].exp_avg) and opt2.state[1][1].step == 1,
     "the optimizer's moments and step counts are restored")
local s2a, o2a = glia.rng_state()
t.ok(s2a == seed and o2a == offset, "the RNG state is restored")

local nope, msg = checkpoint.load(path("missing"), { model = m2 })
t.ok(nope == nil and msg:find("missing"), "a missing checkpoint returns nil and a message")
do
  local f = io.open(checkpoint.path(dir), "r+b")
  f:seek("set", 3)
  f:write("\255\255\255")
  f:close()
end
nope, msg = checkpoint.read(dir)
t.ok(nope == nil and type(msg) == "string", "a corrupt checkpoint returns nil and a message")
checkpoint.save(dir, { model = m, step = 1 })
local other = GPT{ vocab_size = 11, d_model = 16, n_layers = 1, n_heads = 2, ctx = 12 }
t.error_like(function() checkpoint.load(dir, { model = other }) end,
             "unexpected keys: blocks%.2%.",
             "loading into a model of another shape names the offending keys")
t.error_like(function() checkpoint.save(dir, { model = m, step = 1.5 }) end,
             "step must be an integer", "a fractional step is an error")
t.error_like(function() checkpoint.save(dir, { step = 1, extra = { ["a.b"] = 1 } }) end,
             "without dots", "extra keys with dots are an error")

-- ================================================================ resume

-- A tiny text, and steps of the training recipe on it.
local lines, words = {}, { "in", "the", "beginning", "god", "created", "heaven", "and", "earth" }
local gen = data.Generator(5)
for i = 1, 200 do
  local w = {}
  for j = 1, 6 do w[j] = words[gen:random(#words)] end
  lines[i] = table.concat(w, " ")
end
local text = table.concat(lines, "\n") .. "\n"
local ds = data.CharDataset(text)
local train = ds:split(0.9)
local cfg = { vocab_size = ds.vocab_size, d_model = 16, n_layers = 2, n_heads = 2, ctx = 16 }

local function setup()
  glia.manual_seed(SEED)
  local model = GPT(cfg)
  local o = optim.AdamW(model:parameters(), { lr = 3e-3, weight_decay = 0.1 })
  return model, o, data.Generator(SEED, 1)
end

local sched = optim.schedule.cosine{ lr = 3e-3, warmup = 3, total = 20, min_lr = 3e-4 }
local function run_steps(model, o, sampler, from, to, losses)
  for s = from, to do
    o:set_lr(sched(s))
    o:zero_grad()
    local x, y = train:batch(4, 16, sampler)
    local loss = model:loss(x, y)
    loss:backward()
    optim.clip_grad_norm(o, 1.0)
    o:step()
    losses[s] = loss:item()
  end
end

local ma, oa, ga = setup()
local straight = {}
run_steps(ma, oa, ga, 1, 20, straight)

local mb, ob, gb = setup()
local resumed = {}
run_steps(mb, ob, gb, 1, 10, resumed)
checkpoint.save(path("resume"), { model = mb, optimizer = ob, step = 10,
                                  extra = { sampler = gb:state() } })
glia.manual_seed(999) -- a fresh process would start elsewhere
local mc, oc, gc = setup()
glia.randn(5)
local at, ex2 = checkpoint.load(path("resume"), { model = mc, optimizer = oc })
gc:set_state(ex2.sampler)
run_steps(mc, oc, gc, at + 1, 20, resumed)
local same_losses = true
for s = 1, 20 do same_losses = same_losses and straight[s] == resumed[s] end
t.ok(same_losses,
     "10 steps, save, load into fresh objects, 10 steps: the losses equal 20 straight steps")
t.ok(all_same(ma:parameters(), mc:parameters()),
     "... and the parameters are bit-identical")
t.ok(straight[20] < straight[1], "the tiny model learns (loss falls over 20 steps)")

-- ================================================================ examples

local bin = os.getenv("GLIA_BIN") or "bin/glia"
local text_path = path("text.txt")
do
  local f = io.open(text_path, "wb")
  f:write(text)
  f:close()
end
local function run(args) -- the output (LuaJIT's popen close gives no exit status)
  local h = io.popen(bin .. " " .. args .. " 2>&1")
  local out = h:read("*a")
  h:close()
  return out
end
local common = "--text " .. text_path .. " --d 16 --layers 2 --heads 2 --ctx 16 --batch 4 " ..
               "--warmup 3 --eval-every 5 --sample-len 8 --seed 3"
local A, B = path("runA"), path("runB")
local outA = run("examples/train_gpt.lua " .. common .. " --steps 20 --out " .. A)
run("examples/train_gpt.lua " .. common .. " --steps 10 --decay-steps 20 --out " .. B)
local outB = run("examples/train_gpt.lua --resume " .. B .. " --steps 20")
t.ok(outA:find("val loss: %d+%.%d%d%d"), "train_gpt.lua prints 'val loss: X.XXX' at evaluations")
t.ok(outB:find("resumed from .* at step 10"),
     "train_gpt.lua --resume continues from the checkpoint")

local function slurp(p)
  local f = io.open(p, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end
-- step, loss and val_loss of every row (lr too; time differs)
local function log_of(p)
  return (slurp(p .. "/log.csv"):gsub("([^\n]*)\n", function(line)
    return (line:match("^([^,]*,[^,]*,[^,]*,[^,]*)") or line) .. "\n"
  end))
end
t.ok(#log_of(A) > 100 and log_of(A) == log_of(B),
     "across processes, resumed training logs the same losses as the straight run")
local ta, tb = glia.load(checkpoint.path(A)), glia.load(checkpoint.path(B))
local names, equal = 0, true
for k, v in pairs(ta) do
  names = names + 1
  equal = equal and tb[k] ~= nil and same(v, tb[k])
end
t.ok(names > 20 and equal, "... and ends with a bit-identical checkpoint (model and optimizer)")
t.ok(slurp(A .. "/loss.svg"):find("<svg"), "train_gpt.lua writes the loss curve as SVG")
local same_seed = run("examples/train_gpt.lua --resume " .. B .. " --steps 20 --seed 3 --d 16")
t.ok(same_seed:find("resumed from .* at step 20"),
     "train_gpt.lua --resume accepts --seed and --d equal to the checkpoint's")
local other_seed = run("examples/train_gpt.lua --resume " .. B .. " --steps 20 --seed 4")
t.ok(other_seed:find("^train_gpt: %-%-seed 4 differs from the checkpoint's 3 in "),
     "train_gpt.lua --resume refuses a --seed other than the checkpoint's, naming both")

local sample = run("examples/sample.lua " .. A .. " --length 30 --prompt 'in the' --top-k 3")
t.ok(sample:find("^in the[a-z \n]+\n%-%- .*step 20"),
     "sample.lua continues a prompt from the checkpoint")
local bad = run("examples/sample.lua " .. A .. " --prompt 'XYZ'")
t.ok(bad:find("^sample: the prompt must be .* from the vocabulary"),
     "sample.lua rejects a prompt outside the vocabulary")

os.execute("rm -rf '" .. tmp .. "'-*")
t.done()

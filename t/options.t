-- t/options.t -- every options table of the stdlib refuses a key it does not
-- know, naming it and the known ones (glia.options.check), instead of
-- dropping the option without a word.
local t = require "t.tap"
local glia = require "glia"
local options = require "glia.options"
local nn = require "glia.nn"
local optim = require "glia.optim"
local data = require "glia.data"
local checkpoint = require "glia.checkpoint"
local progress = require "glia.progress"
local plot = require "glia.plot"
local cli = require "glia.cli"

-- ============================================================ the helper

do
  local o = { a = 1 }
  t.ok(options.check("f", o, { "a", "b" }) == o, "check returns a table of known keys as it is")
  local e = options.check("f", nil, { "a" })
  t.ok(type(e) == "table" and next(e) == nil, "check turns nil into an empty table")
  t.error_like(function() options.check("f", 3, { "a" }) end, "^.-f: options must be a table, got number",
               "check refuses options that are not a table")
  t.error_like(function() options.check("f", { c = 1, a = 1 }, { "a", "b" }) end,
               "f: unknown option 'c' %(known: a, b%)", "check names the unknown key and lists the known ones")
  t.error_like(function() options.check("f", { d = 1, c = 1 }, { "a" }) end,
               "unknown options 'c', 'd' %(known: a%)", "check names every unknown key, sorted")
  t.error_like(function() options.check("f", { 5 }, { "a" }) end, "unknown option 1 ",
               "a positional entry is an unknown key too")
  local function user() options.check("f", { z = 1 }, { "a" }) end
  local ok, msg = pcall(function() user() end)
  t.ok(not ok and msg:find("options%.t:%d+: f: unknown"), "the error points at the line that passed the options")
end

-- ================================================= each options table

local ds = data.TensorDataset(glia.zeros(4, 2))
local tmp = string.format("%s/glia-options-%d", os.getenv("TMPDIR") or "/tmp", math.random(1, 1e9))
local q = glia.randn(1, 1, 2, 4)
local logits, y = glia.randn(3, 4), glia.tensor({ 1, 2, 3 }, "i64")

local cases = {
  { "nn.F.cross_entropy", function() nn.F.cross_entropy(logits, y, { wieght = 1 }) end, "wieght" },
  { "nn.F.mse", function() nn.F.mse(logits, logits, { reduce = "sum" }) end, "reduce" },
  { "data.DataLoader", function() data.DataLoader(ds, { batchsize = 4 }) end, "batchsize" },
  { "data.fashion_mnist", function() data.fashion_mnist("test", { directory = "/x" }) end, "directory" },
  { "checkpoint.save", function() checkpoint.save(tmp, { step = 1, modle = {} }) end, "modle" },
  { "checkpoint.load", function() checkpoint.load(tmp, { opt = {} }) end, "opt" },
  { "progress.bar", function() progress.bar({ totl = 3 }) end, "totl" },
  { "progress.csv", function() progress.csv(tmp .. ".csv", { "a" }, { apend = true }) end, "apend" },
  { "plot.loss_curve", function() plot.loss_curve(tmp .. ".svg", { series = {}, titel = "x" }) end, "titel" },
  { "plot.loss_curve series", function() plot.loss_curve(tmp .. ".svg", { { y = { 1 }, colour = "#000000" } }) end,
    "colour" },
  { "cli spec", function() cli.read({}, { option = {} }) end, "option" },
  { "cli option declaration", function() cli.read({}, { options = { lr = { "number", 1, mn = 0 } } }) end, "mn" },
  { "glia.gradcheck", function() glia.gradcheck(function(a) return a:sum() end, { glia.ones(2) }, { tol = 1 }) end,
    "tol" },
  { "glia.attention", function() glia.attention(q, q, q, { casual = true }) end, "casual" },
  { "glia.load", function() glia.load(tmp .. ".st", { map = true }) end, "map" },
  { "nn.Linear", function() nn.Linear(2, 3, { bais = false }) end, "bais" },
  { "nn.LayerNorm", function() nn.LayerNorm(2, { epsilon = 1 }) end, "epsilon" },
  { "nn.RMSNorm", function() nn.RMSNorm(2, { bias = false }) end, "bias" },
  { "nn.BatchNorm1d", function() nn.BatchNorm1d(2, { momentom = 0.5 }) end, "momentom" },
  { "nn.MultiHeadAttention", function() nn.MultiHeadAttention(4, 2, { n_kv_heads = 1 }) end, "n_kv_heads" },
  { "nn.CausalSelfAttention", function() nn.CausalSelfAttention(4, 2, { causal = false }) end, "causal" },
  { "nn.TransformerBlock", function() nn.TransformerBlock(4, 2, { mlp_width = 2 }) end, "mlp_width" },
  { "nn.MoE", function() nn.MoE(4, 8, 2, { experts = 2 }) end, "experts" },
  { "glia.moe", function() glia.moe(glia.randn(2, 4), glia.randn(2, 4), glia.randn(2, 3, 4), nil, glia.randn(2, 4, 3), nil, { topk = 1 }) end, "topk" },
  { "glia.moe_route", function() glia.moe_route(glia.randn(2, 4), { topk = 1 }) end, "topk" },
  { "nn.GELU", function() nn.GELU({ approx = "tanh" }) end, "approx" },
  { "nn.init.kaiming_uniform_", function() nn.init.kaiming_uniform_(glia.empty(2, 2), { gain = 1 }) end, "gain" },
  { "nn.init.kaiming_normal_", function() nn.init.kaiming_normal_(glia.empty(2, 2), { fan = 1 }) end, "fan" },
  { "load_state_dict", function() nn.Linear(2, 2):load_state_dict({}, { strikt = false }) end, "strikt" },
  { "optim.SGD", function() optim.SGD({ glia.ones(2) }, { learning_rate = 1 }) end, "learning_rate" },
  { "optim group", function() optim.SGD({ { params = { glia.ones(2) }, mom = 1 } }, { lr = 1 }) end, "mom" },
  { "models.gpt", function() require("models.gpt")({ vocab_size = 5, layers = 2 }) end, "layers" },
  { "models.gpt generate", function()
      require("models.gpt")({ vocab_size = 5, d_model = 4, n_heads = 1, n_layers = 1, ctx = 4 })
        :generate(glia.ones(1, 1):to("i64"), 1, { topk = 2 })
    end, "topk" },
  { "models.mlp", function() require("models.mlp")({ size = { 2, 2 } }) end, "size" },
  { "optim.schedule.cosine", function() optim.schedule.cosine({ lr = 1, total = 2, warm = 1 }) end, "warm" },
}
for _, c in ipairs(cases) do
  t.error_like(c[2], "unknown option '" .. c[3] .. "' %(known: ",
               c[1] .. " refuses an unknown option, naming it and the known ones")
end
os.remove(tmp .. ".csv")
os.remove(tmp .. ".svg")

t.done()

-- models/gpt.lua -- a character-level GPT: token and learned position
-- embeddings, pre-LayerNorm transformer blocks (causal self-attention, GELU
-- MLP x4), a final LayerNorm and a linear head onto the vocabulary.
--
--   local GPT = require "models.gpt"
--   local model = GPT{vocab_size = 73}            -- the gpt_train shape
--   local logits = model(idx)                     -- idx i64 {B,T} 1-based -> {B,T,V}
--   local out = model:generate(prompt, 100, {temperature = 0.8, top_k = 20})
--
-- Config (every field optional but vocab_size): vocab_size, d_model (256),
-- n_layers (4), n_heads (4), ctx (256, the longest sequence: the number of
-- learned positions), dropout (0), bias (true), tie (false: the head has
-- its own weight, as in bench/torch_ref.py's GPT, so parameter counts
-- compare), moe (nil: dense MLPs; see below). The shape letters are B
-- (batch), T (time), C (d_model), V (vocabulary).
--
-- moe = {experts = 8, k = 2, hidden = 4 C / k, every = 1, router, shared,
-- aux_alpha, z_alpha, seq_alpha, bias_gamma, iterations, capacity_factor,
-- activation = "gelu_tanh", chain_start, outer_residual} replaces the MLP of every `every`-th block (the
-- last of each run of `every`) by an nn.MoE of that config (glia.nn.moe), the
-- block's `mlp`: x + attn(ln1(x)), then x + mlp(ln2(x)). The default hidden keeps the
-- active MLP parameters per token those of the dense model. model:loss adds
-- the MoE auxiliary losses in training mode; nn.schedule_step(model) after
-- each optimizer step runs the bias balancing (bias_gamma).
--
-- Initialization follows GPT-2: weights ~ N(0, 0.02), the projections that
-- write into the residual stream scaled by 1/sqrt(2 n_layers), biases zero.
--
-- The blocks are glia.nn.TransformerBlock: x + attn(ln1(x)), then
-- x + mlp(ln2(x)). Generation runs with a key/value cache per block: one forward over the
-- prompt, then one forward of one position per new token. When a sequence
-- reaches ctx positions the caches restart from its last ctx/2 tokens
-- (learned positions stop at ctx), so generation can run to any length.
local glia = require "glia"
local nn   = require "glia.nn"
local options = require "glia.options"
local skip = require "glia.skip"
local pairs, unpack = pairs, table.unpack or unpack

local sqrt, floor, max, min, huge = math.sqrt, math.floor, math.max, math.min, math.huge
local type, error, format, ipairs, tostring = type, error, string.format, ipairs, tostring
local no_grad = glia.no_grad

-- ================================================================== GPT

local GPT = nn.Module:extend("GPT")

local DEFAULTS = { d_model = 256, n_layers = 4, n_heads = 4, ctx = 256, dropout = 0,
                   bias = true, tie = false }
local KEYS = { "vocab_size", "d_model", "n_layers", "n_heads", "ctx", "dropout", "bias", "tie",
               "moe" }

-- The full config: cfg's fields over the defaults, checked.
local function configure(cfg)
  if type(cfg) ~= "table" then error("models.gpt: expected a config table", 4) end
  options.check("models.gpt", cfg, KEYS, 3)
  local c = {}
  for _, k in ipairs(KEYS) do
    local v = cfg[k]
    if v == nil then v = DEFAULTS[k] end
    c[k] = v
  end
  for _, k in ipairs({ "vocab_size", "d_model", "n_layers", "n_heads", "ctx" }) do
    local v = c[k]
    if type(v) ~= "number" or v < 1 or v ~= floor(v) then
      error(format("models.gpt: %s must be a positive integer, got %s", k, tostring(v)), 4)
    end
  end
  if type(c.dropout) ~= "number" or c.dropout < 0 or c.dropout >= 1 then
    error("models.gpt: dropout must be a number in [0, 1), got " .. tostring(c.dropout), 4)
  end
  if c.d_model % c.n_heads ~= 0 then
    error(format("models.gpt: d_model %d is not a multiple of n_heads %d", c.d_model, c.n_heads), 4)
  end
  return c
end

local MOE_KEYS = { "experts", "k", "hidden", "every", "router", "shared", "aux_alpha", "z_alpha",
                   "seq_alpha", "bias_gamma", "iterations", "capacity_factor", "activation",
                   "chain_start", "outer_residual" }

-- The nn.MoE that replaces a block's MLP (moe: the config's moe table).
local function moe_mlp(d, m, bias)
  local k = m.k or 2
  return nn.MoE(d, m.hidden or max(1, floor(4 * d / k)), m.experts or 8, {
    k = k, router = m.router, shared = m.shared, aux_alpha = m.aux_alpha, z_alpha = m.z_alpha,
    seq_alpha = m.seq_alpha, bias_gamma = m.bias_gamma, iterations = m.iterations,
    capacity_factor = m.capacity_factor, activation = m.activation or "gelu_tanh", bias = bias,
    chain_start = m.chain_start, outer_residual = m.outer_residual })
end

function GPT:__init(cfg)
  cfg = configure(cfg)
  self.config = cfg
  self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
  self.pos = nn.Embedding(cfg.ctx, cfg.d_model)
  if cfg.dropout > 0 then self.drop = nn.Dropout(cfg.dropout) end -- none: no call per token
  local blocks = {}
  local m = cfg.moe
  if m ~= nil then options.check("models.gpt: moe", m, MOE_KEYS, 2) end
  for i = 1, cfg.n_layers do
    local mlp = m and i % (m.every or 1) == 0 and moe_mlp(cfg.d_model, m, cfg.bias) or nil
    blocks[i] = nn.TransformerBlock(cfg.d_model, cfg.n_heads, { dropout = cfg.dropout,
                                                                bias = cfg.bias, mlp = mlp })
  end
  self.blocks = nn.ModuleList(blocks)
  self.lnf = nn.LayerNorm(cfg.d_model)
  self.head = nn.Linear(cfg.d_model, cfg.vocab_size, { bias = cfg.bias })
  if cfg.tie then self.head.weight = self.tok.weight end
  self:reset_parameters()
end

-- GPT-2's initialization (see the file header), from glia's seeded RNG.
function GPT:reset_parameters()
  local init, std = nn.init, 0.02
  local resid_std = std / sqrt(2 * self.config.n_layers)
  for _, e in ipairs(self:named_parameters()) do
    local name, p = e[1], e[2]
    if name:match("bias$") or name:match("mlp%.b[12]$") then
      init.zeros_(p)
    elseif name:match("^blocks%.%d+%.ln") or name:match("^lnf") then
      init.ones_(p)
    elseif name:match("proj%.weight$") or name:match("fc2%.weight$") or name:match("mlp%.w2$") then
      init.normal_(p, 0, resid_std)
    else
      init.normal_(p, 0, std)
    end
  end
end

-- idx: i64 {B,T} of 1-based token ids, T <= ctx - pos0. caches: one
-- glia.kv_cache per block (from new_caches) or nil; pos0: the position of
-- idx's first token (0 without caches), or an i64 tensor {B} of each
-- sequence's position (a ragged batch, T = 1). Returns logits {B,T,V}.
function GPT:forward(idx, caches, pos0)
  pos0 = pos0 or 0
  local T = idx:size(2)
  local at = type(pos0) == "number" and pos0 or pos0:to("f32"):max():item()
  if at + T > self.config.ctx then
    error(format("models.gpt: positions %d..%d exceed the context of %d", at + 1, at + T,
                 self.config.ctx), 2)
  end
  local pos = type(pos0) == "number" and self.pos.weight:narrow(1, pos0 + 1, T)
              or self.pos((pos0:to("f32") + 1):to("i64"):view(pos0:numel(), 1))
  local x = self.tok(idx) + pos
  if self.drop then x = self.drop(x) end
  for i, block in ipairs(self.blocks) do x = block(x, caches and caches[i]) end
  return self.head(self.lnf(x))
end

-- The mean cross entropy of the next-token predictions for x against y
-- (both i64 {B,T}), plus the MoE blocks' auxiliary losses in training mode, and
-- the logits.
function GPT:loss(x, y)
  local logits = self(x)
  local loss = glia.cross_entropy(logits, y)
  local aux = self.training and self.config.moe and nn.aux_loss(self)
  return aux and loss + aux or loss, logits
end

-- The optimizer's parameter groups: weight decay wd on the matrices, none on
-- biases, norms and embeddings (as GPT-2 does).
function GPT:param_groups(wd)
  local decay, no_decay = {}, {}
  for _, e in ipairs(self:named_parameters()) do
    local p = e[2]
    if p:dim() >= 2 and not e[1]:match("^tok%.") and not e[1]:match("^pos%.") then
      decay[#decay + 1] = p
    else
      no_decay[#no_decay + 1] = p
    end
  end
  return { { params = decay, weight_decay = wd }, { params = no_decay, weight_decay = 0 } }
end

-- The moe config of a training run's flat settings (examples/train_gpt.lua's
-- --experts, --top-k, --router, --shared, --coe, --aux-alpha, --bias-gamma,
-- as its checkpoints keep them), or nil for a dense model.
function GPT.moe_of_run(run)
  if (run.experts or 0) == 0 then return nil end
  return { experts = run.experts, k = run["top-k"], router = run.router, shared = run.shared,
           iterations = run.coe, aux_alpha = run["aux-alpha"], bias_gamma = run["bias-gamma"] }
end

-- One empty key/value cache per block, for B sequences of up to ctx
-- positions; none for an attention sub-layer the plan in force drops.
function GPT:new_caches(B)
  local caches = {}
  for i, block in ipairs(self.blocks) do
    if not (block.skip and block.skip.attn) then
      caches[i] = block.attn:new_cache(B, self.config.ctx)
    end
  end
  return caches
end

-- Puts a glia.skip plan in force (nil: none); see stdlib/glia/skip.lua.
function GPT:set_plan(plan)
  skip.set_plan(self, plan, "models.gpt: set_plan")
  return self
end

-- ============================================================ generation

-- The next ids {B,1} drawn from logits {B,V}: argmax when temperature is 0,
-- else softmax(logits / temperature) restricted to the top_k largest
-- (all when top_k is nil), sampled with glia's RNG.
local function pick(logits, temperature, top_k)
  if temperature == 0 then return logits:argmax(-1, true) end
  logits = logits / temperature
  local V = logits:size(-1)
  if top_k and top_k < V then
    local kth = logits:topk(top_k, -1):narrow(-1, top_k, 1) -- {B,1}: the k-th largest
    logits = logits:masked_fill(logits:lt(kth), -huge)
  end
  local cdf = glia.softmax(logits, -1):cumsum(-1)
  local u = glia.rand(logits:size(1), 1)
  -- the id is 1 + the number of cdf entries below u (clamped: rounding may leave cdf[V] < u)
  local below = cdf:lt(u):to("f32"):sum(-1, true)
  return below:add(1):clamp(1, V):to("i64")
end

-- generate's lengths checked: a list of B integers in 1..T0 with room for n more.
local function ragged_lengths(lengths, B, T0, n, ctx)
  if type(lengths) ~= "table" or #lengths ~= B then
    error(format("models.gpt: lengths must be a list of %d prompt lengths", B), 3)
  end
  local out = {}
  for b = 1, B do
    local l = lengths[b]
    if type(l) ~= "number" or l ~= floor(l) or l < 1 or l > T0 or l + n > ctx then
      error(format("models.gpt: prompt length %s of sequence %d must be in 1..%d with %d new " ..
                   "tokens within the context of %d", tostring(l), b, T0, n, ctx), 3)
    end
    out[b] = l
  end
  return out
end

-- all {B, T0 + n} (padded prompts, then the new tokens) -> each row's prompt,
-- its new tokens, zeros.
local function ragged_rows(idx, all, lens)
  local T0, n = idx:size(2), all:size(2) - idx:size(2)
  local out = glia.zeros(idx:size(1), T0 + n, "i64")
  for b, l in ipairs(lens) do
    local row = out:select(1, b)
    row:narrow(1, 1, l):copy_(idx:select(1, b):narrow(1, 1, l))
    row:narrow(1, l + 1, n):copy_(all:select(1, b):narrow(1, T0 + 1, n))
  end
  return out
end

-- idx: i64 {B,T0} prompt (T0 >= 1); n: new tokens to append. opts:
-- temperature (1; 0 is greedy), top_k (nil: all), on_token (called with
-- the {B,1} ids of each new position, e.g. to print as they come).
-- plan: a glia.skip plan in force for this call (the prompt runs every
-- layer, generated tokens the plan's decode layers; the caches of the
-- layers they skip are released after the prompt). lengths: a list of B
-- prompt lengths for a ragged batch (idx right-padded with any valid ids,
-- lengths[b] + n <= ctx); row b of the result is then its prompt, its n
-- new tokens and zeros.
-- Returns i64 {B, T0 + n}. Runs in eval mode without autograd, and puts the
-- module back in the mode it was in.
function GPT:generate(idx, n, opts)
  opts = options.check("models.gpt: generate", opts, { "temperature", "top_k", "on_token",
                                                       "plan", "lengths" })
  if type(n) ~= "number" or n ~= floor(n) or n < 0 or n == math.huge then
    error("models.gpt: generate's n (the number of new tokens) must be an integer >= 0, got "
          .. (n ~= n and "NaN" or tostring(n)), 2)
  end
  local temperature, top_k, on_token = opts.temperature or 1, opts.top_k, opts.on_token
  if type(temperature) ~= "number" or temperature < 0 then
    error("models.gpt: temperature must be a number >= 0, got " .. tostring(temperature), 2)
  end
  if top_k ~= nil and (type(top_k) ~= "number" or top_k < 1 or top_k ~= floor(top_k)) then
    error("models.gpt: top_k must be a positive integer, got " .. tostring(top_k), 2)
  end
  if idx:dim() ~= 2 or idx:size(2) < 1 then
    error("models.gpt: generate expects a prompt {B,T} with T >= 1", 2)
  end
  local ctx, B = self.config.ctx, idx:size(1)
  local lens = opts.lengths and ragged_lengths(opts.lengths, B, idx:size(2), n, ctx)
  local was_training, old_plan = self.training, skip.get_plan(self)
  if opts.plan then skip.set_plan(self, opts.plan, "models.gpt: generate") end
  local planned = skip.get_plan(self) ~= nil
  self:eval()
  local ok, out = pcall(no_grad, function()
    local caches
    -- New caches primed on the last (at most) keep tokens of seq (at full
    -- depth); returns the logits {B,V} of its last position and the
    -- position of the next token (a list of B for a ragged batch).
    local function prime(seq, keep)
      caches = self:new_caches(B)
      if planned then skip.set_prompt_len(self, nil) end
      local T = seq:size(2)
      keep = min(T, keep)
      local logits = self:forward(seq:narrow(2, T - keep + 1, keep), caches, 0)
      if planned then
        skip.set_prompt_len(self, 0)
        skip.kv_release(caches, self)
      end
      if lens then
        local rows = {}
        for b = 1, B do rows[b] = logits:narrow(1, b, 1):select(2, lens[b]) end
        for _, c in pairs(caches) do c:set_lengths(lens) end
        return glia.cat(rows, 1), { unpack(lens) }
      end
      return logits:select(2, keep), keep
    end
    local tokens = { idx }
    local logits, pos = prime(idx, ctx)
    for _ = 1, n do
      local id = pick(logits, temperature, top_k)
      tokens[#tokens + 1] = id
      if on_token then on_token(id) end
      if lens then -- each sequence at its own position
        logits = self:forward(id, caches, glia.tensor(pos, "i64")):select(2, 1)
        for b = 1, B do pos[b] = pos[b] + 1 end
      elseif pos < ctx then
        logits = self:forward(id, caches, pos):select(2, 1)
        pos = pos + 1
      else -- the caches are full: keep the second half of the window
        tokens = { glia.cat(tokens, 2) }
        logits, pos = prime(tokens[1], max(1, floor(ctx / 2)))
      end
    end
    if lens then return ragged_rows(idx, glia.cat(tokens, 2), lens) end
    return glia.cat(tokens, 2)
  end)
  if planned then skip.set_prompt_len(self, nil) end
  if opts.plan then self:set_plan(old_plan) end
  self:train(was_training)
  if not ok then error(out, 0) end
  return out
end

return GPT

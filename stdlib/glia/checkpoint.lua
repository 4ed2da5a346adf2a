-- glia.checkpoint -- a training run's state in one safetensors file, so that
-- a resumed run continues bit-identically.
--
--   local checkpoint = require "glia.checkpoint"
--   checkpoint.save(dir, {model = m, optimizer = opt, step = n, extra = {...}})
--   local step, extra = checkpoint.load(dir, {model = m, optimizer = opt})
--   local ck = checkpoint.read(dir)       -- step, extra, tensors, meta: to build
--   checkpoint.load(ck, {model = m})      -- the model from extra before loading
--   checkpoint.make_dir(dir)              -- mkdir -p, for files kept beside it
--
-- The file is DIR/checkpoint.safetensors. Tensors: the model's state dict
-- under "model.<name>", the optimizer's state under "opt.<group>.<i>.<name>"
-- (glia.optim's own names). Metadata strings: "format", "step", the RNG
-- state ("rng.seed", "rng.offset", from glia.rng_state), the optimizer's
-- metadata ("opt.*"), and `extra` flattened to "extra.<key>[.<key>...]" with
-- a type tag ("n:" number, "s:" string, "b:" boolean), for whatever else a
-- run must carry (its config, a data sampler's state, the vocabulary).
--
-- Everything is in one file and glia.save writes atomically (temporary
-- file, fsync, rename), so a crash mid-save leaves the previous checkpoint
-- whole: there is never a model from one step beside an optimizer from
-- another. Failures from outside (a missing or corrupt file, a full disk)
-- return nil and a message; wrong arguments raise.
local glia = require "glia"
local options = require "glia.options"

local type, pairs, ipairs, tostring, tonumber, next = type, pairs, ipairs, tostring, tonumber, next
local error = glia.error -- blames the user's line, never the stdlib's
local fmt, floor, huge, math_type = string.format, math.floor, math.huge, math.type
local io_open, os_execute = io.open, os.execute
local is_tensor = glia.is_tensor

local checkpoint = {}

local FORMAT = "glia-checkpoint-1"
local FILE = "checkpoint.safetensors"
local MODEL, EXTRA = "model.", "extra."

-- The checkpoint file inside dir.
function checkpoint.path(dir)
  return dir .. "/" .. FILE
end

-- ===================================================== extra metadata

-- Integers print without exponent (Lua 5.4's 64-bit ones whole); other
-- numbers with 17 digits, which read back exactly.
local function number_str(x)
  if math_type and math_type(x) == "integer" then return fmt("%d", x) end
  if x == floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then return fmt("%d", x) end
  return fmt("%.17g", x)
end

-- Writes the leaves of t into meta as "<prefix><k1>.<k2>..." = tagged string.
local function flatten(t, prefix, meta)
  for k, v in pairs(t) do
    if type(k) ~= "string" or k == "" or k:find(".", 1, true) then
      error(fmt("glia.checkpoint.save: extra keys must be strings without dots, got %s",
                tostring(k)), 4)
    end
    local key, kind = prefix .. k, type(v)
    if kind == "number" then
      if v ~= v or v == huge or v == -huge then
        error(fmt("glia.checkpoint.save: extra '%s' is not finite", key), 4)
      end
      meta[key] = "n:" .. number_str(v)
    elseif kind == "string" then
      meta[key] = "s:" .. v
    elseif kind == "boolean" then
      meta[key] = v and "b:true" or "b:false"
    elseif kind == "table" and not is_tensor(v) and next(v) ~= nil then
      flatten(v, key .. ".", meta)
    else
      error(fmt("glia.checkpoint.save: extra '%s' must be a number, string, boolean or a " ..
                "non-empty table of them, got %s", key, kind), 4)
    end
  end
end

-- The extra table back from meta, or nil and a message.
local function unflatten(meta)
  local extra = {}
  for key, s in pairs(meta) do
    if key:sub(1, #EXTRA) == EXTRA then
      local tag, body = s:sub(1, 2), s:sub(3)
      local v
      if tag == "n:" then v = tonumber(body)
      elseif tag == "s:" then v = body
      elseif tag == "b:" and (body == "true" or body == "false") then v = body == "true"
      end
      if v == nil then return nil, fmt("metadata '%s' holds a bad value %q", key, s) end
      local node, path = extra, {}
      for part in key:sub(#EXTRA + 1):gmatch("[^.]+") do path[#path + 1] = part end
      for i = 1, #path - 1 do
        if type(node[path[i]]) ~= "table" then node[path[i]] = {} end
        node = node[path[i]]
      end
      node[path[#path]] = v
    end
  end
  return extra
end

-- ============================================================== saving

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function is_dir(dir)
  local f = io_open(dir .. "/.", "rb")
  if f then f:close() end
  return f ~= nil
end

-- Creates dir (and its parents) unless it exists. Returns true or nil, message.
function checkpoint.make_dir(dir)
  if is_dir(dir) then return true end
  os_execute("mkdir -p " .. shell_quote(dir) .. " 2>/dev/null")
  if is_dir(dir) then return true end
  return nil, "glia.checkpoint: cannot create directory " .. dir
end

local function check_state(fname, state, need_step)
  if type(state) ~= "table" then
    error(fmt("glia.checkpoint.%s: expected a table {model =, optimizer =, ...}", fname), 3)
  end
  options.check("glia.checkpoint." .. fname, state,
                need_step and { "model", "optimizer", "step", "extra" }
                  or { "model", "optimizer", "rng" }, 2)
  local m, opt = state.model, state.optimizer
  if m ~= nil and (type(m) ~= "table" or type(m.state_dict) ~= "function") then
    error(fmt("glia.checkpoint.%s: model must be a glia.nn module", fname), 3)
  end
  if opt ~= nil and (type(opt) ~= "table" or type(opt.state_dict) ~= "function") then
    error(fmt("glia.checkpoint.%s: optimizer must be a glia.optim optimizer", fname), 3)
  end
  local step = state.step
  if need_step and (type(step) ~= "number" or step < 0 or step ~= floor(step)) then
    error("glia.checkpoint.save: step must be an integer >= 0, got " .. tostring(step), 3)
  end
end

-- Writes dir/checkpoint.safetensors from state = {model, optimizer, step,
-- extra} (model, optimizer and extra optional) and the current RNG state,
-- creating dir if needed. Returns the file's path, or nil and a message.
function checkpoint.save(dir, state)
  if type(dir) ~= "string" or dir == "" then
    error("glia.checkpoint.save: dir must be a non-empty string", 2)
  end
  check_state("save", state, true)
  local tensors, meta = {}, {}
  if state.optimizer then tensors, meta = state.optimizer:state_dict("opt") end
  if state.model then
    for name, t in pairs(state.model:state_dict()) do tensors[MODEL .. name] = t end
  end
  if state.extra ~= nil then
    if type(state.extra) ~= "table" then
      error("glia.checkpoint.save: extra must be a table, got " .. type(state.extra), 2)
    end
    flatten(state.extra, EXTRA, meta)
  end
  local seed, offset = glia.rng_state()
  meta.format = FORMAT
  meta.step = number_str(state.step)
  meta["rng.seed"] = number_str(seed)
  meta["rng.offset"] = number_str(offset)
  local ok, msg = checkpoint.make_dir(dir)
  if not ok then return nil, msg end
  local path = checkpoint.path(dir)
  ok, msg = glia.save(path, tensors, meta)
  if not ok then return nil, "glia.checkpoint.save: " .. msg end
  return path
end

-- ============================================================= loading

-- Reads dir's checkpoint without applying it: a table {step, extra,
-- tensors, meta, path}, or nil and a message.
function checkpoint.read(dir)
  if type(dir) ~= "string" then error("glia.checkpoint.read: dir must be a string", 2) end
  local path = checkpoint.path(dir)
  local tensors, meta = glia.load(path)
  if not tensors then return nil, "glia.checkpoint: " .. meta end
  local function bad(what) return nil, fmt("glia.checkpoint: %s: %s", path, what) end
  if meta.format ~= FORMAT then
    return bad(fmt("not a glia checkpoint (format %s)", tostring(meta.format)))
  end
  local step = tonumber(meta.step or "")
  if not step or step < 0 or step ~= floor(step) then
    return bad(fmt("bad step %q", tostring(meta.step)))
  end
  for _, k in ipairs({ "rng.seed", "rng.offset" }) do
    if not tonumber(meta[k] or "") then return bad(fmt("bad %s %q", k, tostring(meta[k]))) end
  end
  local extra, msg = unflatten(meta)
  if not extra then return bad(msg) end
  return { step = step, extra = extra, tensors = tensors, meta = meta, path = path }
end

-- The model's entries of a checkpoint's tensors, without the prefix.
local function model_state(tensors)
  local sd = {}
  for name, t in pairs(tensors) do
    if name:sub(1, #MODEL) == MODEL then sd[name:sub(#MODEL + 1)] = t end
  end
  return sd
end

-- Applies a checkpoint (a dir, or what read returned) to opts = {model,
-- optimizer, rng = true}: copies the model's and the optimizer's state in
-- (strictly: every missing, unexpected or mismatched key is named) and
-- restores the RNG state unless rng is false. Returns step, extra, or nil
-- and a message when the file cannot be read.
function checkpoint.load(src, opts)
  opts = opts or {}
  check_state("load", opts, false)
  local ck, msg = src, nil
  if type(src) == "string" then
    ck, msg = checkpoint.read(src)
    if not ck then return nil, msg end
  elseif type(src) ~= "table" or type(src.tensors) ~= "table" then
    error("glia.checkpoint.load: expected a directory or the table checkpoint.read returned", 2)
  end
  if opts.model then opts.model:load_state_dict(model_state(ck.tensors)) end
  if opts.optimizer then opts.optimizer:load_state_dict(ck.tensors, ck.meta, "opt") end
  if opts.rng ~= false then
    glia.set_rng_state(tonumber(ck.meta["rng.seed"]), tonumber(ck.meta["rng.offset"]))
  end
  return ck.step, ck.extra
end

return checkpoint

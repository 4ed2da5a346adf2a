-- glia.cli -- the `--name value` command line of a training or sampling
-- script, checked against a table that declares each option.
--
--   local cli = require "glia.cli"
--   local USAGE = "usage: glia train.lua [DIR] [options]\n  --epochs N ...\n"
--   local opts, given = cli.parse(arg, {
--     options = {
--       epochs   = { "integer", 5 },                      -- kind, default
--       lr       = { "number", 1e-3 },
--       seed     = { "integer", 0, min = "non-negative" }, -- its own bound
--       schedule = { { "cosine", "constant" }, "cosine" }, -- one of these words
--       out      = { "string" },                          -- no default: nil
--       fold     = { "flag" },                            -- --fold alone: true (else false)
--     },
--     min = "positive",  -- the bound of the numbers without their own (default: none)
--     positional = 1,    -- how many arguments that are not options may come (0)
--   }, USAGE)
--   -- opts.epochs, opts.lr, ...; opts[1] is DIR or nil; given.lr is true
--   -- when the command line set --lr rather than the default
--
-- An option is `--name value` or `--name=value`; the last one given wins.
-- Kinds: "integer", "number", "string", a list of allowed strings, or
-- "flag" (an option that takes no value: true when given, false if not).
-- Bounds (`min`, per option or for the whole table): "positive" (> 0),
-- "non-negative" (>= 0), a number n (>= n), or false (none). Integers are
-- whole numbers within +-2^53, returned as integers on Lua 5.4 ("1e3"
-- gives 1000). `--` ends the options: what follows is positional, even
-- when it starts with a dash.
--
-- cli.parse is for a script's own command line, so it is the one function
-- of the stdlib that prints and exits: -h or --help writes the usage to
-- stdout and exits 0; a bad command line writes "<script>: <message>" to
-- stderr (the script's name is arg[0]'s without ".lua"), followed by the
-- usage when an argument is unknown, and exits 1. cli.read does the same
-- work and returns instead, for code that must not exit:
--   cli.read(argv, spec) -> opts, given     the command line is good
--                        -> false           -h or --help asked for the usage
--                        -> nil, message, unknown
--                                           it is bad; unknown is true when
--                                           an argument is not known at all
-- Messages name the option and the value: "--epochs must be a positive
-- integer, got 0", "--lr needs a value", "unknown argument --bogus",
-- "unexpected argument b", "--schedule must be cosine or constant, got x".
-- A bad spec (an unknown kind or bound) raises an error.

local type, pairs, ipairs, tonumber, tostring = type, pairs, ipairs, tonumber, tostring
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local fmt, concat, floor = string.format, table.concat, math.floor
local stdout, stderr, exit = io.stdout, io.stderr, os.exit
local MAX_INT = 2 ^ 53 -- integers beyond it are not exact in a double
local options = require "glia.options"

local cli = {}

-- ============================================================ the spec

local function check_rule(rule, where)
  if rule == nil or rule == false or rule == "positive" or rule == "non-negative"
     or type(rule) == "number" then
    return
  end
  error(fmt("glia.cli: %smin must be \"positive\", \"non-negative\", a number or false, got %s",
            where, tostring(rule)), 4)
end

-- Raises, at the caller of cli.read, for a declaration that is not one.
local function check_spec(spec)
  if type(spec) ~= "table" then error("glia.cli: spec must be a table", 3) end
  options.check("glia.cli: spec", spec, { "options", "min", "positional" }, 2)
  check_rule(spec.min, "")
  for name, decl in pairs(spec.options or {}) do
    local kind = type(decl) == "table" and decl[1]
    local words = type(kind) == "table" and #kind > 0
    if kind ~= "integer" and kind ~= "number" and kind ~= "string" and kind ~= "flag"
       and not words then
      error(fmt("glia.cli: option --%s must be declared as { kind [, default] } with a kind "
                .. "\"integer\", \"number\", \"string\", \"flag\" or a list of words", name), 3)
    end
    options.check("glia.cli: option --" .. name, decl, { 1, 2, "min" }, 2)
    check_rule(decl.min, "option --" .. name .. ": ")
  end
end

-- ============================================================ values

-- "a or b", "a, b or c".
local function alternatives(list)
  if #list < 2 then return tostring(list[1]) end
  return concat(list, ", ", 1, #list - 1) .. " or " .. list[#list]
end

-- What a number of this kind under this bound is, for messages:
-- "a positive integer", "a non-negative number", "an integer >= 2".
local function describe(kind, rule)
  local noun = kind == "integer" and "integer" or "number"
  if rule == "positive" or rule == "non-negative" then return "a " .. rule .. " " .. noun end
  local phrase = (kind == "integer" and "an " or "a ") .. noun
  return type(rule) == "number" and phrase .. " >= " .. tostring(rule) or phrase
end

local function meets(rule, x)
  if rule == "positive" then return x > 0 end
  if rule == "non-negative" then return x >= 0 end
  if type(rule) == "number" then return x >= rule end
  return true
end

-- The value of option name (decl: its declaration, rule: its bound) from
-- the string v, or nil and a message.
local function convert(name, decl, rule, v)
  local kind = decl[1]
  if kind == "string" then return v end
  if type(kind) == "table" then
    for _, word in ipairs(kind) do
      if v == word then return v end
    end
    return nil, fmt("--%s must be %s, got %s", name, alternatives(kind), v)
  end
  local x = tonumber(v)
  local ok = x ~= nil and x == x
  if ok and kind == "integer" then
    ok = x == floor(x) and x <= MAX_INT and x >= -MAX_INT
    if ok then x = floor(x) end -- on Lua 5.4, an integer
  end
  if ok and meets(rule, x) then return x end
  return nil, fmt("--%s must be %s, got %s", name, describe(kind, rule), v)
end

-- ============================================================ parsing

-- See the header: opts, given | false | nil, message, unknown.
function cli.read(argv, spec)
  check_spec(spec)
  local options, max_pos = spec.options or {}, spec.positional or 0
  local opts, given = {}, {}
  for name, decl in pairs(options) do
    opts[name] = decl[2]
    if decl[1] == "flag" then opts[name] = false end
  end
  local i, only_positional = 1, false
  while argv[i] ~= nil do
    local a = argv[i]
    if only_positional or a == "-" or a:sub(1, 1) ~= "-" then
      if #opts >= max_pos then return nil, "unexpected argument " .. a, true end
      opts[#opts + 1] = a
    elseif a == "--" then
      only_positional = true
    elseif a == "-h" or a == "--help" then
      return false
    else
      local name, v = a:match("^%-%-([^=]+)=(.*)$")
      if not name then name = a:match("^%-%-(.+)$") end
      local decl = name and options[name]
      if not decl then return nil, "unknown argument " .. a, true end
      if decl[1] == "flag" then
        if v ~= nil then return nil, "--" .. name .. " takes no value, got " .. v end
        v = true
      elseif v == nil then
        i = i + 1
        v = argv[i]
        if v == nil then return nil, "--" .. name .. " needs a value" end
      end
      local rule = decl.min
      if rule == nil then rule = spec.min end
      local x, err = v, nil
      if v ~= true then x, err = convert(name, decl, rule, v) end
      if x == nil then return nil, err end
      opts[name], given[name] = x, true
    end
    i = i + 1
  end
  return opts, given
end

-- See the header: opts and given, or the process ends.
function cli.parse(argv, spec, usage)
  local opts, given, unknown = cli.read(argv, spec)
  if opts then return opts, given end
  if opts == false then
    stdout:write(usage or "")
    exit(0)
  end
  local msg = given -- on a bad command line, read's second result is the message
  local script = tostring(argv[0] or "glia"):match("([^/]*)$"):gsub("%.lua$", "")
  stderr:write(script, ": ", msg, "\n", unknown and usage or "")
  exit(1)
end

return cli

-- t/cli_opts.t -- glia.cli, the command-line helper of the example scripts:
-- cli.read in this process (kinds, bounds, choices, defaults, positional
-- arguments, and every bad command line as nil and a message), then
-- cli.parse in a child process, where --help and bad command lines end it.
-- (t/cli.t tests the glia executable's own command line.)
local t = require "t.tap"
local cli = require "glia.cli"
local u = require "t.util"

local sh_quote, slurp = u.sh_quote, u.slurp

local SPEC = {
  options = {
    n      = { "integer", 5 },
    x      = { "number", 0.5 },
    s      = { "string" },
    mode   = { { "cosine", "constant", "linear" }, "cosine" },
    seed   = { "integer", 0, min = "non-negative" },
    offset = { "integer", min = false },
    k      = { "integer", min = 2 },
  },
  min = "positive",
}

-- cli.read of the words of a string, as `arg` would hold them.
local function read(line, spec)
  local argv = {}
  for w in line:gmatch("%S+") do argv[#argv + 1] = w end
  return cli.read(argv, spec or SPEC)
end

-- One test line: line is refused with exactly the message want, and
-- unknown says whether the argument itself was not known.
local function refused(line, want, desc, spec, unknown)
  local opts, msg, unk = read(line, spec)
  local ok = opts == nil and msg == want and (unk == true) == (unknown == true)
  if not t.ok(ok, desc) then
    t.diag("got " .. tostring(opts) .. ", " .. tostring(msg) .. ", " .. tostring(unk))
  end
end

-- ======================================================== defaults

local o, given = read("")
t.ok(o.n == 5 and o.x == 0.5 and o.mode == "cosine" and o.seed == 0,
     "an empty command line gives every declared default")
t.ok(o.s == nil and o.offset == nil and next(given) == nil,
     "an option without a default is nil, and nothing is marked given")
o, given = read("--n 7 --s hi")
t.ok(o.n == 7 and o.s == "hi" and o.x == 0.5 and given.n and given.s and not given.x,
     "given marks the options the command line set, the others keep their defaults")

-- ======================================================== kinds

o = read("--n 12 --x 2.25 --s a/b --mode linear")
t.ok(o.n == 12 and o.x == 2.25 and o.s == "a/b" and o.mode == "linear",
     "integer, number, string and choice options read their values")
o = read("--n 1e3")
t.ok(o.n == 1000 and (not math.type or math.type(o.n) == "integer"),
     "an integer written 1e3 is the integer 1000 (a Lua integer on 5.4)")
o = read("--s -5 --x 3")
t.ok(o.s == "-5" and o.x == 3, "a value may start with a dash")
o = read("--s --help")
t.is(o and o.s, "--help", "--help as an option's value is that value, not a request for help")
o = read("--n=9 --s=a=b")
t.ok(o.n == 9 and o.s == "a=b", "--name=value sets the option; the value may hold '='")
o = read("--n 3 --n 4")
t.is(o.n, 4, "an option given twice keeps its last value")

refused("--n 2.5", "--n must be a positive integer, got 2.5", "a fraction is not an integer")
refused("--n abc", "--n must be a positive integer, got abc", "a word is not an integer")
refused("--n 1e999", "--n must be a positive integer, got 1e999", "infinity is not an integer")
refused("--n 1e300", "--n must be a positive integer, got 1e300",
        "an integer too large to be exact in a double is refused")
refused("--x abc", "--x must be a positive number, got abc", "a word is not a number")
refused("--x nan", "--x must be a positive number, got nan", "nan is not a number")
refused("--offset 0.5", "--offset must be an integer, got 0.5",
        "an integer without a bound says just 'an integer'")
refused("--mode exp", "--mode must be cosine, constant or linear, got exp",
        "a word outside the choices is refused, listing them")

-- ======================================================== bounds

refused("--n 0", "--n must be a positive integer, got 0", "positive refuses 0 for an integer")
refused("--x 0", "--x must be a positive number, got 0", "positive refuses 0 for a number")
o = read("--x 1e-9")
t.is(o.x, 1e-9, "positive accepts a tiny number")
o = read("--seed 0")
t.is(o.seed, 0, "an option's own non-negative bound overrides the spec's and accepts 0")
refused("--seed -1", "--seed must be a non-negative integer, got -1",
        "non-negative refuses -1")
o = read("--offset -3")
t.is(o.offset, -3, "min = false lifts the spec's bound")
o = read("--k 2")
t.is(o.k, 2, "a numeric bound accepts its own value")
refused("--k 1", "--k must be an integer >= 2, got 1", "a numeric bound refuses what is below it")
o = read("--n 0", { options = { n = { "integer" } } })
t.is(o.n, 0, "without any bound, 0 is accepted")

-- ======================================================== positional

local POS = { options = { n = { "integer", 1 } }, positional = 2 }
o = read("a --n 3 b", POS)
t.ok(o[1] == "a" and o[2] == "b" and o.n == 3,
     "positional arguments land in opts[1], opts[2] in order, between options")
o = read("", POS)
t.ok(o[1] == nil, "positional arguments are optional")
refused("a b c", "unexpected argument c", "one positional argument too many is refused", POS, true)
refused("foo", "unexpected argument foo", "a spec without positional arguments refuses them",
        nil, true)
o = read("- --n 2", POS)
t.is(o[1], "-", "a lone dash is a positional argument")
o = read("--n 2 -- -x --n", POS)
t.ok(o[1] == "-x" and o[2] == "--n" and o.n == 2,
     "after --, arguments are positional even when they start with a dash")

-- ======================================================== errors

refused("--bogus 1", "unknown argument --bogus", "an unknown option is refused by name",
        nil, true)
refused("-x", "unknown argument -x", "a single-dash option is unknown", nil, true)
refused("--n", "--n needs a value", "an option at the end without its value is refused")
refused("--n 3 --x", "--x needs a value", "the option missing its value is named")
t.is(read("-h"), false, "-h asks for the usage (false)")
t.is(read("--n 3 --help --bogus"), false, "--help asks for the usage, whatever follows")
refused("--bogus --help", "unknown argument --bogus",
        "arguments are read in order: an unknown one before --help is refused", nil, true)
o = read("-- --help", POS)
t.is(o[1], "--help", "after --, --help is a positional argument")

-- ======================================================== flags

local FLAGS = { options = { fold = { "flag" }, n = { "integer", 5 } } }
o, given = read("", FLAGS)
t.ok(o.fold == false and not given.fold, "a flag not given is false")
o, given = read("--fold --n 3", FLAGS)
t.ok(o.fold == true and given.fold and o.n == 3, "a flag given is true and takes no value")
o = read("--n 3 --fold", FLAGS)
t.ok(o.fold == true and o.n == 3, "a flag may come last")
refused("--fold=yes", "--fold takes no value, got yes", "a flag with =value is refused", FLAGS)

t.error_like(function() cli.read({}, { options = { n = { "int" } } }) end,
             "option %-%-n must be declared as { kind", "an unknown kind in the spec raises")
t.error_like(function() cli.read({}, { options = { n = "integer" } }) end,
             "option %-%-n must be declared", "a declaration that is not a table raises")
t.error_like(function() cli.read({}, { options = { n = { {} } } }) end,
             "option %-%-n must be declared", "an empty list of choices raises")
t.error_like(function() cli.read({}, { options = { n = { "integer", min = "big" } } }) end,
             "option %-%-n: min must be", "an unknown bound raises")
t.error_like(function() cli.read({}, { min = true }) end, "min must be",
             "a spec-wide bound of the wrong type raises")

-- ======================================================== cli.parse

local dir = io.popen("mktemp -d"):read("*l")
local script = u.spit(dir .. "/opts_demo.lua", [[
local cli = require "glia.cli"
local o, given = cli.parse(arg, {
  options = { n = { "integer", 5 }, s = { "string" } },
  min = "positive",
  positional = 1,
}, "usage: opts_demo [FILE] [--n N] [--s S]\n")
print(o.n, o.s, o[1], given.n)
]])

-- Runs the script with a shell-quoted argument string; returns stdout,
-- stderr and the exit status.
local function run(args)
  local _, code = u.sh(sh_quote(u.exe()) .. " " .. sh_quote(script) .. " " .. args
                       .. " </dev/null >" .. dir .. "/out 2>" .. dir .. "/err")
  return slurp(dir .. "/out"), slurp(dir .. "/err"), code
end

local out, err, code = run("--n 7 f.txt")
t.ok(code == 0 and out == "7\tnil\tf.txt\ttrue\n" and err == "",
     "cli.parse returns the options, the positional argument and given")
out, err, code = run("--help")
t.ok(code == 0 and out == "usage: opts_demo [FILE] [--n N] [--s S]\n" and err == "",
     "--help prints the usage to stdout and exits 0")
out, err, code = run("-h --n 0")
t.ok(code == 0 and out:find("^usage: opts_demo") ~= nil, "-h does the same")
out, err, code = run("--n 0")
t.ok(code == 1 and out == "" and err == "opts_demo: --n must be a positive integer, got 0\n",
     "a bad value exits 1 with 'script: message' on stderr, naming the option and the value")
out, err, code = run("--s")
t.ok(code == 1 and err == "opts_demo: --s needs a value\n",
     "a missing value exits 1 with a message naming the option")
out, err, code = run("--bogus 1")
t.ok(code == 1 and out == ""
     and err == "opts_demo: unknown argument --bogus\nusage: opts_demo [FILE] [--n N] [--s S]\n",
     "an unknown option exits 1, naming it, with the usage after the message")
out, err, code = run("a b")
t.ok(code == 1 and err:find("^opts_demo: unexpected argument b\nusage:") ~= nil,
     "an extra positional argument exits 1, naming it, with the usage")

os.execute("rm -rf " .. sh_quote(dir))
t.done()

-- t/install.t -- `make install PREFIX=dir` gives a working tree: the
-- executable finds the installed stdlib, and a host program builds against
-- glia.h and glia.pc and runs Lua through libglia.so.
local t = require "t.tap"

local u = require "t.util"

-- Whether a shell command succeeds, and its output (stdout and stderr).
local function sh(cmd)
  local out, code = u.sh(cmd .. " 2>&1")
  return code == 0, out
end

local lua = os.getenv("GLIA_TEST_LUA") or "lua5.4"
local san = os.getenv("GLIA_TEST_SAN") or ""
local flavor = "LUA=" .. lua .. (san ~= "" and " SAN=1" or "")
local dir = os.tmpname()
os.remove(dir)

local ok, out = sh(string.format("make -s install %s PREFIX=%s", flavor, dir))
t.ok(ok, "make install succeeds")
if not ok then t.diag(out) end
for _, f in ipairs { "/bin/glia", "/lib/libglia.a", "/lib/libglia.so", "/include/glia.h",
                     "/lib/pkgconfig/glia.pc", "/share/glia/glia/init.lua", "/share/glia/glia/nn/init.lua" } do
  local fh = io.open(dir .. f)
  t.ok(fh ~= nil, "installs " .. f:sub(2))
  if fh then fh:close() end
end

ok, out = sh(string.format("cd / && %s/bin/glia -e 'local nn = require \"glia.nn\"; print(nn.Linear(2, 3))'", dir))
t.ok(ok and out:find("Linear(2 -> 3): 9 parameters", 1, true),
     "the installed executable finds the installed stdlib from any directory")

if san == "" then
  local src = dir .. "/host.c"
  local f = assert(io.open(src, "w"))
  f:write([[
#include <glia.h>
#include <stdio.h>
int main(void) {
  glia_vm *vm = glia_vm_open();
  if (!vm) return 2;
  glia_status st = glia_vm_run_string(vm, "local nn = require 'glia.nn'; assert(nn.Linear(2, 2))");
  if (st != GLIA_OK) printf("%s\n", glia_vm_errmsg(vm));
  glia_vm_close(vm);
  return st == GLIA_OK ? 0 : 1;
}
]])
  f:close()
  ok, out = sh(string.format(
    "cc -o %s/host %s $(PKG_CONFIG_PATH=%s/lib/pkgconfig pkg-config --cflags --libs glia) -Wl,-rpath,%s/lib && cd / && %s/host",
    dir, src, dir, dir, dir))
  t.ok(ok, "a host program builds with pkg-config glia and runs the installed stdlib through libglia.so")
  if not ok then t.diag(out) end
else
  t.ok(true, "# SKIP a sanitized libglia.so cannot link into a plain host")
end
os.execute("rm -rf " .. dir)
t.done()

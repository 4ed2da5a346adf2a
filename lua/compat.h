/*
** lua/compat.h -- the differences between Lua 5.4 and LuaJIT 2.1 (5.1 API)
** that the binding touches, hidden behind one set of names.
*/
#ifndef GLIA_COMPAT_H
#define GLIA_COMPAT_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#if LUA_VERSION_NUM >= 504
#define compat_newuserdata(L, n) lua_newuserdatauv((L), (n), 0)
#define compat_rawlen(L, i) lua_rawlen((L), (i))
#define compat_isinteger(L, i) lua_isinteger((L), (i))
#define COMPAT_HAS_CLOSE 1
#else
#define compat_newuserdata(L, n) lua_newuserdata((L), (n))
#define compat_rawlen(L, i) lua_objlen((L), (i))
#define compat_isinteger(L, i) 0
#define COMPAT_HAS_CLOSE 0
#ifndef LUA_OK
#define LUA_OK 0
#endif
#define lua_pushglobaltable(L) lua_pushvalue((L), LUA_GLOBALSINDEX)
#endif

#endif

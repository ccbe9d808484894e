package wal

import "runtime"

func runtimeGosched() { runtime.Gosched() }

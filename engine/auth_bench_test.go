package engine

import (
	"fmt"
	"testing"
)

// BenchmarkAuth measures the credential checks every request makes, with
// many workspaces in the process (each with a data import key).
func BenchmarkAuth(b *testing.B) {
	for _, n := range []int{10, 1000} {
		e, _ := Open(Options{Logger: quietLogger()})
		pk, _ := e.CreatePartner("amp")
		var apiKey, secret string
		for i := 0; i < n; i++ {
			k, _ := e.CreateWorkspace(fmt.Sprintf("ws%d", i))
			_, s, _ := e.Workspace(fmt.Sprintf("ws%d", i)).CreateImportKey("amp")
			if i == n/2 {
				apiKey, secret = k, s
			}
		}
		b.Run(fmt.Sprintf("workspaces_%d/partner", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.AuthPartner("amp", []byte(pk), []byte(secret)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("workspaces_%d/api_key", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if e.WorkspaceByAPIKey([]byte(apiKey)) == nil {
					b.Fatal("not found")
				}
			}
		})
	}
}

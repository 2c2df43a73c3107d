// Package gatewaytest is a small key-value service with HTTP mappings
// (google.api.http annotations in gatewaytest.proto), its generated gRPC
// stubs and its grpc-gateway v2 reverse proxy (gatewaytest.pb.gw.go), for
// the test that serves HTTP/JSON through a grpc-gateway mux registered with
// RegisterItemsHandler, the *grpc.ClientConn form, over notnets' drop-in
// tier (gateway_test.go in the module's root). Only tests use it.
//
// To regenerate the Go files after changing gatewaytest.proto, with protoc
// (Debian's protobuf-compiler; the files were made with libprotoc 3.21.12)
// and the three plugins on PATH:
//
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
//	go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@v2.34.0
//	go generate ./internal/gatewaytest
//
// third_party/google/api holds googleapis' annotations.proto and
// http.proto (Apache 2.0, unchanged), which gatewaytest.proto imports;
// their Go code is google.golang.org/genproto/googleapis/api/annotations.
package gatewaytest

//go:generate protoc -I . -I third_party --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative --grpc-gateway_out=. --grpc-gateway_opt=paths=source_relative gatewaytest.proto

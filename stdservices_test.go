package notnets_test

import (
	"context"
	"slices"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
)

// TestStandardServices uses grpc-go's reflection and health services,
// registered on a notnets server in another process, through their
// generated clients: what grpcurl-like tools and readiness checks need.
func TestStandardServices(t *testing.T) {
	srv := startServer(t)
	cc := srv.dial(t)
	ctx := context.Background()

	hc, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health check: %v, %v; want SERVING", hc.GetStatus(), err)
	}

	stream, err := rpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"helloworld.Greeter", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, without %s", names, want)
		}
	}
	// A file descriptor for a service, as a tool fetches before calling it.
	if err := stream.Send(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "helloworld.Greeter"}}); err != nil {
		t.Fatal(err)
	}
	if r, err = stream.Recv(); err != nil || len(r.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("file containing helloworld.Greeter: %v, %v", r.GetErrorResponse(), err)
	}
	stream.CloseSend()
}

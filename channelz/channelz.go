// Package channelz serves gRPC's channelz service, grpc.channelz.v1.Channelz,
// with the process's notnets servers and their connections in it, beside
// everything grpc-go's own service shows.
//
// grpc-go's channelz service (google.golang.org/grpc/channelz/service)
// answers over notnets, but lists only what grpc-go registered in its
// internal package google.golang.org/grpc/internal/channelz: other
// modules cannot import it, and grpc-go offers no public way to register
// a server or a socket of another transport (google.golang.org/grpc/channelz
// exports only the Identifier type). So this package answers the same
// service itself: servers, server sockets and sockets of notnets get ids
// from 2^48 up, far above grpc-go's (one counter from 1), and every other
// question, and every id below, goes to grpc-go's implementation, whose
// answers come first in the lists. A channelz client (grpcdebug, a
// dashboard) sees one service that knows both.
//
// Importing the package turns channelz on, for grpc-go (as importing
// grpc-go's service does) and for notnets: a notnets Server made from
// then on registers itself, its listeners and its connections, and counts
// their calls and streams. A program that does not import it pays
// nothing for it; that is why this is a package of its own rather than a
// function of package notnets.
package channelz

import (
	"context"
	"time"

	"google.golang.org/grpc"
	channelzgrpc "google.golang.org/grpc/channelz/grpc_channelz_v1"
	channelzpb "google.golang.org/grpc/channelz/grpc_channelz_v1"
	"google.golang.org/grpc/channelz/service"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/notnets/notnets/internal/chz"
)

func init() { chz.TurnOn() }

// RegisterChannelzServiceToServer registers the channelz service on s (a
// *notnets.Server, or a *grpc.Server), as grpc-go's function of the same
// name in google.golang.org/grpc/channelz/service does, with the notnets
// servers of the process added. Register one or the other on a server,
// not both: they have the same service name.
func RegisterChannelzServiceToServer(s grpc.ServiceRegistrar) {
	channelzgrpc.RegisterChannelzServer(s, &server{grpc: grpcChannelz()})
}

// grpcChannelz returns grpc-go's implementation of the service, which its
// registration function hands to the registrar.
func grpcChannelz() channelzgrpc.ChannelzServer {
	var c capture
	service.RegisterChannelzServiceToServer(&c)
	return c.impl
}

// capture is a grpc.ServiceRegistrar that keeps the implementation.
type capture struct{ impl channelzgrpc.ChannelzServer }

// RegisterService keeps impl, grpc-go's channelz implementation.
func (c *capture) RegisterService(_ *grpc.ServiceDesc, impl any) {
	c.impl = impl.(channelzgrpc.ChannelzServer)
}

// server answers for notnets' entities and hands the rest to grpc-go's.
type server struct {
	channelzgrpc.UnimplementedChannelzServer
	grpc channelzgrpc.ChannelzServer
}

// pageSize is grpc-go's page size when a request sets none.
const pageSize = 50

func page(max int64) int {
	if max <= 0 {
		return pageSize
	}
	return int(max)
}

// GetTopChannels answers with grpc-go's channels: notnets adds none.
func (s *server) GetTopChannels(ctx context.Context, req *channelzpb.GetTopChannelsRequest) (*channelzpb.GetTopChannelsResponse, error) {
	return s.grpc.GetTopChannels(ctx, req)
}

// GetChannel answers with grpc-go's channel.
func (s *server) GetChannel(ctx context.Context, req *channelzpb.GetChannelRequest) (*channelzpb.GetChannelResponse, error) {
	return s.grpc.GetChannel(ctx, req)
}

// GetSubchannel answers with grpc-go's subchannel.
func (s *server) GetSubchannel(ctx context.Context, req *channelzpb.GetSubchannelRequest) (*channelzpb.GetSubchannelResponse, error) {
	return s.grpc.GetSubchannel(ctx, req)
}

// GetServers lists grpc-go's servers, then notnets', by id from the
// request's start, at most its max.
func (s *server) GetServers(ctx context.Context, req *channelzpb.GetServersRequest) (*channelzpb.GetServersResponse, error) {
	max := page(req.GetMaxResults())
	resp := &channelzpb.GetServersResponse{}
	if req.GetStartServerId() < chz.IDBase {
		g, err := s.grpc.GetServers(ctx, &channelzpb.GetServersRequest{StartServerId: req.GetStartServerId(), MaxResults: int64(max)})
		if err != nil {
			return nil, err
		}
		resp.Server = g.GetServer()
		switch {
		case !g.GetEnd(): // more of grpc-go's on the next page
			return resp, nil
		case len(resp.Server) >= max: // a full page: notnets' on the next
			resp.End = none()
			return resp, nil
		}
	}
	ours, end := chz.Servers(req.GetStartServerId(), max-len(resp.Server))
	for _, sv := range ours {
		resp.Server = append(resp.Server, serverProto(sv))
	}
	resp.End = end
	return resp, nil
}

// none reports whether there is no notnets server.
func none() bool {
	s, _ := chz.Servers(0, 1)
	return len(s) == 0
}

// GetServer answers for a notnets server, or asks grpc-go.
func (s *server) GetServer(ctx context.Context, req *channelzpb.GetServerRequest) (*channelzpb.GetServerResponse, error) {
	if req.GetServerId() < chz.IDBase {
		return s.grpc.GetServer(ctx, req)
	}
	sv := chz.ServerByID(req.GetServerId())
	if sv == nil {
		return nil, status.Errorf(codes.NotFound, "requested server %d not found", req.GetServerId())
	}
	return &channelzpb.GetServerResponse{Server: serverProto(sv)}, nil
}

// GetServerSockets lists a notnets server's connections, or asks grpc-go.
func (s *server) GetServerSockets(ctx context.Context, req *channelzpb.GetServerSocketsRequest) (*channelzpb.GetServerSocketsResponse, error) {
	if req.GetServerId() < chz.IDBase {
		return s.grpc.GetServerSockets(ctx, req)
	}
	resp := &channelzpb.GetServerSocketsResponse{End: true}
	sv := chz.ServerByID(req.GetServerId())
	if sv == nil {
		return resp, nil // as grpc-go answers for a server it does not have
	}
	conns, end := sv.Conns(req.GetStartSocketId(), page(req.GetMaxResults()))
	for _, sk := range conns {
		resp.SocketRef = append(resp.SocketRef, &channelzpb.SocketRef{SocketId: sk.ID, Name: sk.Name})
	}
	resp.End = end
	return resp, nil
}

// GetSocket answers for a notnets listener or connection, or asks
// grpc-go.
func (s *server) GetSocket(ctx context.Context, req *channelzpb.GetSocketRequest) (*channelzpb.GetSocketResponse, error) {
	if req.GetSocketId() < chz.IDBase {
		return s.grpc.GetSocket(ctx, req)
	}
	sk := chz.SocketByID(req.GetSocketId())
	if sk == nil {
		return nil, status.Errorf(codes.NotFound, "requested socket %d not found", req.GetSocketId())
	}
	return &channelzpb.GetSocketResponse{Socket: socketProto(sk)}, nil
}

func serverProto(sv *chz.Server) *channelzpb.Server {
	p := &channelzpb.Server{
		Ref: &channelzpb.ServerRef{ServerId: sv.ID, Name: sv.Name},
		Data: &channelzpb.ServerData{
			CallsStarted:             sv.Calls.Started.Load(),
			CallsSucceeded:           sv.Calls.Succeeded.Load(),
			CallsFailed:              sv.Calls.Failed.Load(),
			LastCallStartedTimestamp: timestamp(sv.Calls.LastStarted.Load()),
		},
	}
	for _, l := range sv.Listeners() {
		p.ListenSocket = append(p.ListenSocket, &channelzpb.SocketRef{SocketId: l.ID, Name: l.Name})
	}
	return p
}

func socketProto(sk *chz.Socket) *channelzpb.Socket {
	p := &channelzpb.Socket{
		Ref: &channelzpb.SocketRef{SocketId: sk.ID, Name: sk.Name},
		Data: &channelzpb.SocketData{
			StreamsStarted:                   sk.Streams.Started.Load(),
			StreamsSucceeded:                 sk.Streams.Succeeded.Load(),
			StreamsFailed:                    sk.Streams.Failed.Load(),
			LastRemoteStreamCreatedTimestamp: timestamp(sk.Streams.LastStarted.Load()),
		},
		Local:  address(sk.Local),
		Remote: address(sk.Remote),
	}
	if sk.Security != "" {
		p.Security = &channelzpb.Security{Model: &channelzpb.Security_Other{Other: &channelzpb.Security_OtherSecurity{Name: sk.Security}}}
	}
	return p
}

// address is a notnets address (pool/service#pid) as channelz's "other"
// address: its human-readable name, without a value.
func address(a string) *channelzpb.Address {
	if a == "" {
		return nil
	}
	return &channelzpb.Address{Address: &channelzpb.Address_OtherAddress_{OtherAddress: &channelzpb.Address_OtherAddress{Name: "notnets:" + a}}}
}

func timestamp(ns int64) *timestamppb.Timestamp {
	if ns == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, ns))
}

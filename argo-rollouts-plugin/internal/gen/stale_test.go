package gen_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	// The checked-in stubs, which register their descriptors.
	_ "github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen/fanout/admin/v1"
	_ "github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/gen/fanout/v1"
)

const protoDir = "../../../proto"

// protoc finds the protoc that generate.sh uses: $PROTOC, else the protoc-bin-vendored
// crate's (the Rust build fetches it). Without one the test is skipped, except in CI.
func protoc(t *testing.T) (bin, include string) {
	t.Helper()
	bin = os.Getenv("PROTOC")
	if bin == "" {
		home := os.Getenv("CARGO_HOME")
		if home == "" {
			dir, _ := os.UserHomeDir()
			home = filepath.Join(dir, ".cargo")
		}
		found, _ := filepath.Glob(filepath.Join(home, "registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc"))
		sort.Strings(found)
		if len(found) > 0 {
			bin = found[len(found)-1]
		}
	}
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("no protoc: set PROTOC, or build the Rust workspace once (cargo fetches protoc-bin-vendored)")
		}
		t.Skip("no protoc (set PROTOC, or build the Rust workspace once)")
	}
	return bin, filepath.Join(filepath.Dir(bin), "..", "include")
}

// The stubs describe ../proto as it is: every file, message, field, enum and service, as
// descriptors (not text), so a change to a .proto without ./generate.sh fails here.
func TestStubsMatchTheProtos(t *testing.T) {
	bin, include := protoc(t)
	var files []string
	err := filepath.WalkDir(protoDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".proto") {
			rel, _ := filepath.Rel(protoDir, path)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil || len(files) == 0 {
		t.Fatalf("no .proto under %s: %v", protoDir, err)
	}
	out := filepath.Join(t.TempDir(), "set.binpb")
	args := append([]string{"-I", protoDir, "-I", include, "--descriptor_set_out=" + out}, files...)
	if msg, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", bin, args, err, msg)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	for _, want := range set.GetFile() {
		fd, err := protoregistry.GlobalFiles.FindFileByPath(want.GetName())
		if err != nil {
			t.Errorf("%s has no Go stub: add it to generate.sh and run ./generate.sh (%v)", want.GetName(), err)
			continue
		}
		have := protodesc.ToFileDescriptorProto(fd)
		normalize(want)
		normalize(have)
		if !proto.Equal(want, have) {
			t.Errorf("the Go stubs of %s are stale: run ./generate.sh\n%s", want.GetName(), differences(want, have))
		}
	}
}

// normalize drops what protoc and protoc-gen-go record differently and what does not
// describe the API: source info, and json_name, which protoc fills in only for plugins.
func normalize(f *descriptorpb.FileDescriptorProto) {
	f.SourceCodeInfo = nil
	var fields func(m *descriptorpb.DescriptorProto)
	fields = func(m *descriptorpb.DescriptorProto) {
		for _, x := range m.GetField() {
			x.JsonName = nil
		}
		for _, n := range m.GetNestedType() {
			fields(n)
		}
	}
	for _, m := range f.GetMessageType() {
		fields(m)
	}
}

// differences names the top-level messages, enums and services that differ, or are only on
// one side, so the failure says where to look.
func differences(want, have *descriptorpb.FileDescriptorProto) string {
	var lines []string
	compare := func(kind string, w, h []named) {
		byName := map[string]named{}
		for _, x := range h {
			byName[x.GetName()] = x
		}
		for _, x := range w {
			y, ok := byName[x.GetName()]
			switch {
			case !ok:
				lines = append(lines, kind+" "+x.GetName()+": in the .proto, not in the stubs")
			case !proto.Equal(x, y):
				lines = append(lines, kind+" "+x.GetName()+": differs\n  proto: "+prototext.Format(x)+"\n  stubs: "+prototext.Format(y))
			}
			delete(byName, x.GetName())
		}
		for name := range byName {
			lines = append(lines, kind+" "+name+": in the stubs, not in the .proto")
		}
	}
	compare("message", asNamed(want.GetMessageType()), asNamed(have.GetMessageType()))
	compare("enum", asNamed(want.GetEnumType()), asNamed(have.GetEnumType()))
	compare("service", asNamed(want.GetService()), asNamed(have.GetService()))
	if len(lines) == 0 {
		lines = append(lines, "file options or imports differ:\n  proto: "+prototext.Format(want)+"\n  stubs: "+prototext.Format(have))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// named is a descriptor with a name: a message, an enum or a service.
type named interface {
	proto.Message
	GetName() string
}

func asNamed[T named](xs []T) []named {
	out := make([]named, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// The registry also knows the stubs' packages by their proto package names.
func TestStubsRegisterTheirServices(t *testing.T) {
	for _, name := range []protoreflect.FullName{"fanout.admin.v1.Admin", "fanout.v1.Fanout"} {
		if _, err := protoregistry.GlobalFiles.FindDescriptorByName(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The virtio core (split virtqueues, transports, devices) lands here with the virtio-pci issue.
namespace pier::virtio {}

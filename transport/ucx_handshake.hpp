// The link handshake of ucx_node: four messages over a plain TCP connection
// to the node's listener, authenticating both ends with the cluster secret,
// then exchanging UCX worker addresses. Each message is a frame: a 4-byte
// big-endian length (of type and body), a type byte (the message's number
// below, 1..4) and the body.
//
//   client → server  hello      {proto, client link id, client token, client name, boot id, nonce Nc}
//   server → client  challenge  {server link id, server token, server name, boot id, nonce Ns,
//                                proof_s = HMAC(secret, "server" | Nc | Ns | names)}
//   client → server  auth       {proof_c = HMAC(secret, "client" | Ns | Nc | names | Wc), worker address Wc}
//   server → client  accept     {proof_a = HMAC(secret, "server-accept" | Nc | Ns | names | Ws), worker address Ws}
//
// The server proves itself first, over the client's fresh nonce; the client
// answers only a server that proved itself, so its proof is never shown to an
// impostor (who could otherwise relay it to a real server). The role label
// keeps a server proof from passing as a client proof. Link ids and tokens
// name the receiver's link in every later message header; a token is random
// so a connection cannot claim another's link. UCX endpoints are opened only
// after the handshake, to the worker addresses it exchanged (bound into the
// proofs), so no UCX socket-address listener exists: UCX 1.13's aborts the
// process on a malformed connection header. UCX's own transports still
// listen on ports of their own and take connections from anyone; what
// arrives there without a link's token is dropped. Boot ids tell whether
// both run on one host (shared memory); a node with shared memory off sends
// an empty one.
// Bodies are msgpack arrays decoded under tight limits.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace troupe::ucx_handshake {

/// Version of this handshake; a peer speaking another is refused.
inline constexpr uint32_t protocol = 2;
/// Longest handshake message accepted (names, boot id, a worker address).
inline constexpr size_t max_message_bytes = 16384;
/// Longest node name.
inline constexpr size_t max_name_bytes = 255;

using nonce = std::array<uint8_t, 32>;
using proof = std::array<uint8_t, 32>;

/// Frame types on the handshake connection.
enum frame_type : uint8_t { frame_hello = 1, frame_challenge = 2, frame_auth = 3, frame_accept = 4 };
/// Bytes before a frame's body: length (4) and type (1).
inline constexpr size_t frame_head_bytes = 5;
/// A frame: head then body.
std::vector<char> frame(frame_type type, const std::vector<char>& body);

/// Who computes a proof: the server in its challenge, the client in its
/// auth, the server again in its accept.
enum class role { client, server, server_accept };

/// 32 bytes from the system CSPRNG (OpenSSL RAND_bytes).
nonce random_nonce();
/// A nonzero random 64-bit token.
uint64_t random_token();

/// HMAC-SHA256(secret, role label | nonce of the verifier | nonce of the prover
/// | length-prefixed client name | length-prefixed server name |
/// length-prefixed `bound`): a server proves over (Nc, Ns), a client over
/// (Ns, Nc). `bound` is the prover's worker address in auth and accept, so a
/// party in the path cannot point the UCX endpoints elsewhere.
proof make_proof(const std::string& secret, role who, const nonce& verifier_nonce, const nonce& prover_nonce,
                 const std::string& client_name, const std::string& server_name,
                 const std::vector<char>& bound = {});

/// Constant-time comparison.
bool proof_equal(const proof& a, const proof& b);

struct hello {
  uint32_t protocol = ucx_handshake::protocol;
  uint32_t link = 0;   ///< the client's link id
  uint64_t token = 0;  ///< the client's token
  std::string name;
  std::string boot_id;
  nonce n{};
};

struct challenge {
  uint32_t link = 0;   ///< the server's link id
  uint64_t token = 0;  ///< the server's token
  std::string name;
  std::string boot_id;
  nonce n{};
  proof p{};
};

struct auth {
  proof p{};
  std::vector<char> worker_address;
};

struct accept {
  proof p{};  ///< the server's proof over the client's nonce and its own worker address
  std::vector<char> worker_address;
};

std::vector<char> encode(const hello& m);
std::vector<char> encode(const challenge& m);
std::vector<char> encode(const auth& m);
std::vector<char> encode(const accept& m);

/// Each decode returns an empty string on success, else what was wrong.
std::string decode(const void* data, size_t size, hello& out);
std::string decode(const void* data, size_t size, challenge& out);
std::string decode(const void* data, size_t size, auth& out);
std::string decode(const void* data, size_t size, accept& out);

/// This machine's boot id (/proc/sys/kernel/random/boot_id), else its host name.
std::string local_boot_id();

}  // namespace troupe::ucx_handshake

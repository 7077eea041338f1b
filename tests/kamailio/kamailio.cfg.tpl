#!KAMAILIO
#
# Gangway interop tests: kamailio 5.6 as a PBX stand-in. A registrar and
# stateful proxy with digest auth; users live in an htable (no database).
# Written out by tests/support/kamailio.rs, which replaces the @NAME@
# placeholders (each written between two @ signs):
#   ADDR      127.0.0.1
#   PORT      SIP port (UDP and TCP)
#   ALIASES   `alias=` lines for the served domain (may be empty)
#   CTL       path of the ctl module's unix socket (kamcmd -s unix:PATH)
#   USERS     one `$sht(users=>NAME) = "PASSWORD";` line per user
#
# Log markers the harness parses (xlog, to stderr):
#   GWKAM-READY                       htable filled at startup
#   GWKAM-CHALLENGE <code> <method> from=<user> rc=<auth result>
#   GWKAM-AUTHOK <method> user=<auth user>
#   GWKAM-REGISTERED <aor> contact=<Contact header value>
#   GWKAM-RELAY <method> to=<r-uri>
#   GWKAM-NOTFOUND <r-uri>
#   GWKAM-REPLY <code> <method>       replies relayed back upstream

debug=2
log_stderror=yes
log_color=no
memdbg=5
memlog=5
log_facility=LOG_LOCAL0
log_prefix="{$mt $hdr(CSeq) $ci} "

fork=yes
children=2
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no
dns_try_ipv6=no
# Loopback only: every socket is explicit.
listen=udp:@ADDR@:@PORT@
listen=tcp:@ADDR@:@PORT@
@ALIASES@

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "htable.so"
loadmodule "ctl.so"

# ctl: binrpc on a unix socket in the instance's directory, for kamcmd.
modparam("ctl", "binrpc", "unix:@CTL@")

# tm: fail fast, the tests are short.
modparam("tm", "fr_timer", 10000)
modparam("tm", "fr_inv_timer", 30000)

# rr: the from-tag lets loose_route tell the directions apart.
modparam("rr", "append_fromtag", 1)

# usrloc: memory only.
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "use_domain", 0)

# registrar: keep expiry short and honour what the phone asks for.
modparam("registrar", "default_expires", 120)
modparam("registrar", "min_expires", 10)
modparam("registrar", "max_expires", 3600)

# auth: a fixed secret for the nonces, which last the whole test.
modparam("auth", "nonce_expire", 300)
modparam("auth", "secret", "gangway-interop-test-secret")

# htable: the users and their plain-text passwords.
modparam("htable", "htable", "users=>size=4;")

event_route[htable:mod-init] {
@USERS@
	xlog("L_NOTICE", "GWKAM-READY\n");
}

request_route {
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}

	if (is_method("OPTIONS") && uri == myself && $rU == $null) {
		sl_send_reply("200", "Keepalive");
		exit;
	}

	# Requests inside a dialog follow the record-routed path.
	if (has_totag()) {
		route(WITHINDLG);
		exit;
	}

	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			xlog("L_NOTICE", "GWKAM-RELAY CANCEL to=$ru\n");
			t_relay();
		}
		exit;
	}

	# Retransmissions of a relayed request are answered by tm (t_relay).

	if (is_method("REGISTER")) {
		route(REGISTRAR);
		exit;
	}

	# Every other dialog-starting request needs proxy authentication.
	route(PROXYAUTH);

	# Preloaded routes (the caller's outbound proxy: us) are dropped.
	remove_hf("Route");
	if (is_method("INVITE|SUBSCRIBE")) {
		record_route();
	}

	if ($rU == $null) {
		sl_send_reply("484", "Address Incomplete");
		exit;
	}
	# Location lookup by user part (usrloc use_domain=0).
	lookup("location");
	switch ($retcode) {
		case -1:
		case -3:
			xlog("L_NOTICE", "GWKAM-NOTFOUND $ru\n");
			send_reply("404", "Not Found");
			exit;
		case -2:
			send_reply("405", "Method Not Allowed");
			exit;
	}
	route(RELAY);
	exit;
}

route[RELAY] {
	xlog("L_NOTICE", "GWKAM-RELAY $rm to=$ru\n");
	if (is_method("INVITE|BYE|CANCEL|UPDATE")) {
		t_on_reply("MANAGE_REPLY");
	}
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}

route[WITHINDLG] {
	if (loose_route()) {
		route(RELAY);
		exit;
	}
	if (is_method("ACK")) {
		# An ACK for a relayed negative reply is absorbed by tm.
		if (t_check_trans()) {
			route(RELAY);
		}
		exit;
	}
	sl_send_reply("404", "Not here");
	exit;
}

route[REGISTRAR] {
	# Digest (401) against the htable, the To user must be the auth user.
	pv_auth_check("$fd", "$sht(users=>$fU)", "0", "1");
	$var(rc) = $retcode;
	if ($var(rc) < 0) {
		xlog("L_NOTICE", "GWKAM-CHALLENGE 401 REGISTER from=$fU rc=$var(rc)\n");
		# Flag 1: qop=auth, as most PBXes send it (cnonce, nc).
		www_challenge("$fd", "1");
		exit;
	}
	xlog("L_NOTICE", "GWKAM-AUTHOK REGISTER user=$au\n");
	consume_credentials();
	if (!save("location")) {
		sl_reply_error();
		exit;
	}
	xlog("L_NOTICE", "GWKAM-REGISTERED $tu contact=$ct\n");
	exit;
}

route[PROXYAUTH] {
	# Digest (407) against the htable, the From user must be the auth user.
	pv_auth_check("$fd", "$sht(users=>$fU)", "0", "1");
	$var(rc) = $retcode;
	if ($var(rc) < 0) {
		xlog("L_NOTICE", "GWKAM-CHALLENGE 407 $rm from=$fU rc=$var(rc)\n");
		# Flag 1: qop=auth, as most PBXes send it (cnonce, nc).
		proxy_challenge("$fd", "1");
		exit;
	}
	xlog("L_NOTICE", "GWKAM-AUTHOK $rm user=$au\n");
	# The credentials are ours: they do not travel on.
	consume_credentials();
}

onreply_route[MANAGE_REPLY] {
	if (status =~ "[1-6][0-9][0-9]") {
		xlog("L_NOTICE", "GWKAM-REPLY $rs $rm\n");
	}
}

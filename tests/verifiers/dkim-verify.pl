#!/usr/bin/perl
# Verifies the DKIM signatures of the message in $ARGV[0] with Debian's Mail::DKIM against the
# DNS server $ARGV[1]:$ARGV[2]. Prints one line per signature: "domain selector algorithm result".
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my ($file, $host, $port) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => [$host], port => $port,
                                                   recurse => 1, udp_timeout => 2, retry => 1));
my $dkim = Mail::DKIM::Verifier->new();
open(my $fh, '<', $file) or die "cannot open $file: $!";
binmode $fh;
while (my $line = <$fh>) {
    $line =~ s/\r?\n\z/\r\n/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $signature ($dkim->signatures) {
    print join(' ', $signature->domain, $signature->selector, $signature->algorithm,
               $signature->result), "\n";
}

// The share-group reader of `fanout-tools bench --kafka apache` (tools/src/bench/share.rs):
// MEMBERS KafkaShareConsumers, one per thread, in one share group, read a backlog of EXPECTED
// records and acknowledge each one (explicit mode, ACCEPT), as the gateway's subscribers ack
// each delivery. Compiled by the bench with javac against target/kafka-jars.
//
//   java -cp CLASSES:JARS/* ShareBench BOOTSTRAP GROUP TOPIC MEMBERS EXPECTED LIMIT_SECONDS
//
// Prints, on stdout, one line as the first record arrives and one result line at the end:
//   share-bench: first
//   share-bench: result records=.. acked=.. failed=.. redelivered=.. bytes=.. elapsed_ns=.. cpu_ns=.. share_version=..
// or, when the cluster refuses share groups, `share-bench: error <why>` (exit 3). Exit 0 when
// every record was acknowledged and the broker confirmed it, 2 otherwise.
//
// Threads, not a process per member: one JVM's start, JIT and GC are paid once, as the
// gateway's subscribers share the bench's process; KafkaShareConsumer is single-threaded, so
// each member is a thread of its own with a consumer of its own.

import java.lang.management.ManagementFactory;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.FeatureMetadata;
import org.apache.kafka.clients.admin.FinalizedVersionRange;
import org.apache.kafka.clients.consumer.AcknowledgeType;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaShareConsumer;
import org.apache.kafka.common.config.ConfigResource;

public class ShareBench {
    static final AtomicLong records = new AtomicLong();
    static final AtomicLong acked = new AtomicLong();
    static final AtomicLong failed = new AtomicLong();
    static final AtomicLong redelivered = new AtomicLong();
    static final AtomicLong bytes = new AtomicLong();
    /// System.nanoTime() and process CPU (ns) at the first record; 0 until then.
    static final AtomicLong firstNs = new AtomicLong();
    static final AtomicLong cpuAtFirst = new AtomicLong();
    /// Set by the acknowledgement callback that confirms the last record.
    static final AtomicLong lastNs = new AtomicLong();
    static final AtomicLong cpuAtLast = new AtomicLong();
    static final AtomicBoolean done = new AtomicBoolean();

    static long processCpuNs() {
        return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
            .getProcessCpuTime();
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], group = args[1], topic = args[2];
        int members = Integer.parseInt(args[3]);
        long expected = Long.parseLong(args[4]);
        long limitNs = Duration.ofSeconds(Long.parseLong(args[5])).toNanos();

        short shareVersion = prepareGroup(bootstrap, group);

        List<Thread> threads = new ArrayList<>();
        long started = System.nanoTime();
        for (int i = 0; i < members; i++) {
            int member = i;
            Thread t = new Thread(() -> member(bootstrap, group, topic, member, expected, started, limitNs),
                "share-member-" + i);
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) t.join();

        long elapsed = lastNs.get() - firstNs.get();
        long cpu = cpuAtLast.get() - cpuAtFirst.get();
        System.out.println("share-bench: result records=" + records.get() + " acked=" + acked.get()
            + " failed=" + failed.get() + " redelivered=" + redelivered.get() + " bytes=" + bytes.get()
            + " elapsed_ns=" + Math.max(elapsed, 0) + " cpu_ns=" + Math.max(cpu, 0)
            + " share_version=" + shareVersion);
        System.out.flush();
        System.exit(acked.get() >= expected ? 0 : 2);
    }

    /// Checks that the cluster has share groups (the finalized `share.version` feature), then
    /// sets the group's `share.auto.offset.reset` to `earliest` (a group config, KIP-932): a new
    /// share group starts at the latest offset, and would see none of the backlog.
    static short prepareGroup(String bootstrap, String group) throws Exception {
        Properties properties = new Properties();
        properties.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(properties)) {
            short level = 0;
            try {
                FeatureMetadata features = admin.describeFeatures().featureMetadata().get();
                FinalizedVersionRange share = features.finalizedFeatures().get("share.version");
                level = share == null ? 0 : share.maxVersionLevel();
            } catch (ExecutionException e) {
                fail("the cluster did not describe its features (" + e.getCause() + ")");
            }
            if (level < 1) {
                fail("the cluster's share.version feature is " + level + ": share groups (KIP-932) are off; a "
                    + "Kafka 4.2+ cluster enables them with `kafka-features.sh --bootstrap-server " + bootstrap
                    + " upgrade --feature share.version=1` (Kafka 4.1: preview, the same command)");
            }
            ConfigResource resource = new ConfigResource(ConfigResource.Type.GROUP, group);
            Collection<AlterConfigOp> ops = List.of(new AlterConfigOp(
                new ConfigEntry("share.auto.offset.reset", "earliest"), AlterConfigOp.OpType.SET));
            try {
                admin.incrementalAlterConfigs(Map.of(resource, ops)).all().get();
            } catch (ExecutionException e) {
                fail("the cluster refused the share group's config share.auto.offset.reset=earliest (" + e.getCause()
                    + "): share groups need Kafka 4.1 or newer with share.version >= 1");
            }
            return level;
        }
    }

    static void fail(String why) {
        System.out.println("share-bench: error " + why);
        System.out.flush();
        System.exit(3);
    }

    static void member(String bootstrap, String group, String topic, int member, long expected, long started,
                       long limitNs) {
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("group.id", group);
        p.put("client.id", "share-bench-" + member);
        p.put("share.acknowledgement.mode", "explicit");
        p.put("key.deserializer", "org.apache.kafka.common.serialization.ByteArrayDeserializer");
        p.put("value.deserializer", "org.apache.kafka.common.serialization.ByteArrayDeserializer");
        try (KafkaShareConsumer<byte[], byte[]> consumer = new KafkaShareConsumer<>(p)) {
            // Called on this thread, inside poll and commitSync, once the broker has answered
            // for the acknowledgements sent: what "acked" counts.
            consumer.setAcknowledgementCommitCallback((offsets, exception) -> {
                long n = offsets.values().stream().mapToLong(Collection::size).sum();
                if (exception != null) {
                    failed.addAndGet(n);
                    return;
                }
                if (acked.addAndGet(n) >= expected && done.compareAndSet(false, true)) {
                    cpuAtLast.set(processCpuNs());
                    lastNs.set(System.nanoTime());
                }
            });
            consumer.subscribe(List.of(topic));
            while (!done.get() && System.nanoTime() - started < limitNs) {
                // The acknowledgements of the previous batch go to the broker with this poll's
                // fetch (explicit mode: every record of a batch must be acknowledged before it).
                ConsumerRecords<byte[], byte[]> batch = consumer.poll(Duration.ofMillis(100));
                for (ConsumerRecord<byte[], byte[]> record : batch) {
                    if (firstNs.get() == 0 && firstNs.compareAndSet(0, System.nanoTime())) {
                        cpuAtFirst.set(processCpuNs());
                        System.out.println("share-bench: first");
                        System.out.flush();
                    }
                    records.incrementAndGet();
                    if (record.deliveryCount().orElse((short) 1) > 1) redelivered.incrementAndGet();
                    bytes.addAndGet(record.value() == null ? 0 : record.value().length);
                    consumer.acknowledge(record, AcknowledgeType.ACCEPT);
                }
                if (batch.isEmpty() && records.get() >= expected) {
                    // Nothing more to read here; the acknowledgements still in flight are
                    // confirmed by a commit rather than by waiting on a fetch.
                    consumer.commitSync(Duration.ofSeconds(10));
                }
            }
            // Whatever this member acknowledged since its last poll.
            consumer.commitSync(Duration.ofSeconds(10));
        } catch (RuntimeException e) {
            System.err.println("share-bench: member " + member + " failed: " + e);
        }
    }
}
